"""Live forecast lines, stop rules and `scalerl status`, on run dirs written here (no training)."""

import json
import time

import numpy as np
import pytest

from scalerl.cli.live_forecast import (
    NOT_IDENTIFIED,
    STOP_MIN_POINTS,
    LiveForecast,
    _p_below,
    append_line,
    describe,
    read_lines,
    refit,
    stop_reason,
)
from scalerl.cli.run_config import RunSection
from scalerl.curvefit.fit import FitOptions, fit_curves
from scalerl.curvefit.forecast import forecast_budget
from scalerl.curvefit.readers import ReadOptions, read_sources


def write_run(run, n_evals=30, ceiling=0.8, max_steps=None, train=True, noise=0.01):
    """A run dir whose evals follow a sigmoid in GPU-hours; every 10 steps an eval, every step a train line."""
    run.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    lines = []
    for k in range(n_evals):
        step = 10 * k
        g = 0.001 * step
        y = 0.2 + (ceiling - 0.2) / (1 + (0.05 / g) ** 1.5) if g > 0 else 0.2
        if train and step:
            lines += [
                {"kind": "train", "step": s, "gpu_hours": 0.001 * s, "time_s": 2.0 * s}
                for s in range(step - 9, step + 1)
            ]
        lines.append(
            {"kind": "eval", "step": step, "gpu_hours": g, "time_s": 2.0 * step, "pass_rate": y + rng.normal(0, noise)}
        )
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    steps = max_steps if max_steps is not None else 10 * (n_evals - 1)
    (run / "config.toml").write_text(
        f'[run]\nrun_dir = "{run}"\n[trainer]\nmax_steps = {steps}\n[curvefit]\nn_boot = 200\n'
    )
    return run


CURVEFIT = {"r0": "first", "bound": 1.0, "level": 0.9, "n_boot": 200}


def test_refit_line_equals_fit_on_the_points_up_to_its_step(tmp_path):
    run = write_run(tmp_path / "run")
    line = refit(run, 150, {"budget": 1.0, "target": 0.7}, CURVEFIT)
    # The same fit by hand on the evaluations up to step 150 only.
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] <= 150))
    (curve,) = read_sources([cut], ReadOptions())
    fit = fit_curves([curve], FitOptions(n_boot=200))
    at = forecast_budget(fit, 1.0)
    assert line["n_evals"] == 16 and line["gpu_hours"] == pytest.approx(0.15)
    assert line["A"] == pytest.approx(fit.params.A) and line["A_ci"] == pytest.approx(fit.ci("A"))
    assert line["B"] == pytest.approx(fit.params.B) and line["C_mid"] == pytest.approx(fit.params.c_mid)
    assert line["pass_rate_at_budget"] == pytest.approx(at["pass_rate"])
    assert line["pass_rate_at_budget_ci"] == pytest.approx(at["ci"])
    assert line["budget"] == 1.0 and line["target"] == 0.7 and line["warnings"] == list(dict.fromkeys(fit.warnings))
    # The full run bends: the sigmoid is identified and its ceiling is near the true 0.8.
    full = refit(run, 290, {"budget": 0.0}, CURVEFIT)
    assert full["identified"] and abs(full["A"] - 0.8) < 0.05
    assert full["budget"] == pytest.approx(2.9)  # budget 0 = 10x the compute so far
    assert NOT_IDENTIFIED not in describe(full) and f"{full['A']:.3f}" in describe(full)


def test_refit_with_too_few_points_says_so(tmp_path):
    run = write_run(tmp_path / "run", n_evals=3)
    line = refit(run, 20, {}, CURVEFIT)
    assert not line["identified"] and "too few points" in line["error"] and "A" not in line
    assert describe(line) == NOT_IDENTIFIED and describe(None) == NOT_IDENTIFIED


def test_p_below_reads_the_band_as_a_normal_per_side():
    # level 0.9: the band's edges are the 5% and 95% points.
    assert _p_below(0.7, 0.5, 0.4, 0.7, 0.9) == pytest.approx(0.95, abs=1e-9)
    assert _p_below(0.4, 0.5, 0.4, 0.7, 0.9) == pytest.approx(0.05, abs=1e-9)
    assert _p_below(0.5 + 1e-9, 0.5, 0.5, 0.5, 0.9) == 1.0


def test_stop_rules_fire_only_when_set_and_with_enough_points():
    line = {
        "A": 0.5,
        "n_points": STOP_MIN_POINTS,
        "target": 0.9,
        "budget": 2.0,
        "p_miss_target": 0.99,
        "pass_rate_at_budget": 0.5,
        "curve_at_budget_ci": [0.45, 0.55],
        "gain": 0.004,
        "gain_ci": [-0.01, 0.02],
    }
    off = RunSection()
    assert stop_reason(line, off) is None
    unreachable = RunSection(target=0.9, stop_if_target_unreachable=0.95)
    why = stop_reason(line, unreachable)
    assert "stop_if_target_unreachable" in why and "0.990" in why
    assert stop_reason({**line, "p_miss_target": 0.9}, unreachable) is None
    assert stop_reason({**line, "n_points": STOP_MIN_POINTS - 1}, unreachable) is None
    flat = RunSection(stop_if_gain_below=0.01)
    assert "stop_if_gain_below" in stop_reason(line, flat)
    assert stop_reason({**line, "gain": 0.02}, flat) is None


def test_live_forecast_refits_the_newest_eval_in_a_low_priority_process(tmp_path):
    run = write_run(tmp_path / "run")
    (run / "logs").mkdir()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    lf = LiveForecast(run)
    assert lf.tick(records[:40]) == []  # a refit started; its line is not there yet
    assert lf.busy() or read_lines(run / "forecast.jsonl")
    # Waits, then fits the newest evaluation too. The refits run at nice 10: on a loaded 2-core machine the default
    # 60 s for both ran out (the newest step was never fitted), so the test gives them longer.
    lines = lf.finish(records, timeout_s=600)
    assert [x["step"] for x in lines][-1] == 290 and lines[0]["step"] < 290
    assert lf.latest["step"] == 290


def test_append_line_writes_whole_json_lines(tmp_path):
    path = tmp_path / "f.jsonl"
    append_line(path, {"a": float("nan"), "b": [1.0, float("inf")]})
    append_line(path, {"a": 1})
    assert read_lines(path) == [{"a": None, "b": [1.0, None]}, {"a": 1}]


def test_run_watch_returns_the_stop_reason_and_survives_a_broken_forecast(tmp_path, capsys):
    from scalerl.cli.run_watch import RunWatch

    run = write_run(tmp_path / "run")
    (run / "logs").mkdir()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # The refit reads [run] from the run's config.toml, as scalerl train writes it.
    cfg = (run / "config.toml").read_text().replace("[run]\n", "[run]\ntarget = 0.99\nbudget = 0.3\n")
    (run / "config.toml").write_text(cfg)
    watch = RunWatch(run, RunSection(target=0.99, budget=0.3, stop_if_target_unreachable=0.9), resume=False)
    deadline = time.time() + 60
    why = None
    while why is None and time.time() < deadline:
        why = watch.tick(records)
        time.sleep(0.1)
    assert why and "misses the target 0.99" in why  # the curve's ceiling is 0.8
    broken = RunWatch(run, RunSection(), resume=False)

    def no_fork(_records):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    broken.forecast.tick = no_fork
    assert broken.tick(records) is None and not broken.forecast.enabled
    assert "live forecast off" in capsys.readouterr().err
