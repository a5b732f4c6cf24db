"""Review of the curve tools (forecast messages): a target the averaged forecast never reaches below A is not called
"above the fitted ceiling", and a forecast's gain is measured from the forecast's own value at the last fitted point."""

from pathlib import Path

import numpy as np
import pytest

from scalerl.curvefit.fit import FitOptions, fit_curves
from scalerl.curvefit.forecast import forecast_budget, forecast_target, persistence
from scalerl.curvefit.readers import ReadOptions, read_sources

DATA = Path(__file__).parents[1] / "data"


def _run(file: str, suffix: str):
    (run,) = [c for c in read_sources([DATA / file], ReadOptions()) if c.name.endswith(suffix)]
    return run


@pytest.fixture(scope="module")
def lr2e5():
    return fit_curves([_run("cs336_lr_sweep_subset.csv", "2e-5")], FitOptions(n_boot=100))


def test_a_target_below_a_that_the_average_never_reaches_says_so(lr2e5):
    fit = lr2e5
    target = 0.98
    assert fit.average is not None and target < fit.params.A
    out = forecast_target(fit, target)
    assert not out["reachable"] and out["compute"] is None
    s = out["statement"]
    assert "above the fitted ceiling" not in s, s
    assert "is not reached by the forecast" in s and "levels off at about" in s, s
    w = fit.average
    assert f"{w.weight('sigmoid'):.0%} sigmoid" in s and f"{w.weight('level'):.0%} recent level" in s
    # the level it stops at is below the target, and the sigmoid alone gets there where the statement says
    off = float(s.split("levels off at about ")[1].split(",")[0])
    assert off < target
    c = out["sigmoid_compute"]
    assert c is not None and f"would reach it at about {c:.4g}" in s
    assert abs(float(fit.params(np.array([c]))[0]) - target) < 1e-9


def test_a_target_at_or_above_a_keeps_the_ceiling_statement(lr2e5):
    out = forecast_target(lr2e5, 1.0)
    assert not out["reachable"] and out["sigmoid_compute"] is None
    assert "above the fitted ceiling" in out["statement"]


def test_a_reachable_target_reports_the_sigmoid_alone_too(lr2e5):
    out = forecast_target(lr2e5, 0.5)
    assert out["reachable"] and out["sigmoid_compute"] is not None


def test_gain_of_a_flat_forecast_is_measured_from_the_forecast_itself():
    fit = fit_curves([_run("spurious_rewards_subset.csv", "Qwen2.5-Math-7B_format")], FitOptions(n_boot=100))
    assert fit.average is not None
    out = forecast_budget(fit, 1000.0)
    base = float(fit.average(np.array([fit.x_last]))[0])
    assert out["from"]["pass_rate"] == pytest.approx(base)
    # this run's averaged forecast is flat beyond the data: its gain is about 0, not the -0.048 that the fitted
    # sigmoid's value at the last point made of the switch between models
    assert abs(out["gain"]) < 0.005, out["gain"]
    assert out["gain_ci"] == pytest.approx([out["ci"][0] - base, out["ci"][1] - base])
    # within the data the forecast is the fitted curve, and so is the base
    within = forecast_budget(fit, fit.x_last)
    assert within["from"]["pass_rate"] == pytest.approx(float(fit.params(np.array([fit.x_last]))[0]))


def test_no_backtest_statement_names_only_existing_options(lr2e5):
    boot = fit_curves([_run("cs336_lr_sweep_subset.csv", "2e-5")], FitOptions(n_boot=50, interval="bootstrap"))
    s = persistence(boot)["statement"]
    assert "--point" not in s and "--interval bootstrap" in s, s
    switch = fit_curves([_run("cs336_lr_sweep_subset.csv", "2e-5")], FitOptions(n_boot=50, point="switch"))
    assert "--point" not in persistence(switch)["statement"]
