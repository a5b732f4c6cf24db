"""The warm-up rule: fits leave out the first 10% of the log-compute range by default (exclusion.py; issue 24's
second to fifth rounds left out 60%, which `--warmup 0.6` still gives), the shape prior is learned on whole runs
(corpus.py), and `--warmup` sets the share."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from scalerl.cli.main import cli
from scalerl.curvefit.corpus import learn_priors
from scalerl.curvefit.data import Curve
from scalerl.curvefit.exclusion import WARMUP_SHARE
from scalerl.curvefit.fit import FitOptions, fit_curves


def _rise(seed, noise=0.02, c_mid=100.0, b=1.0):
    rng = np.random.default_rng(seed)
    x = np.arange(0, 1001, 10.0)
    y = 0.2 + 0.4 / (1.0 + (c_mid / np.maximum(x, 1e-9)) ** b) + rng.normal(0, noise, len(x))
    y[0] = 0.2
    return Curve(f"rise-{seed}", x, y, "step", "pass_rate")


def test_default_fit_leaves_out_ten_percent_of_the_log_range():
    fit = fit_curves([_rise(0)], FitOptions(n_boot=50))
    assert WARMUP_SHARE == 0.1
    assert fit.threshold == pytest.approx(10.0 * 100.0**0.1) and "first 10%" in fit.exclusion_rule
    assert np.all(fit.x[fit.used] >= fit.threshold) and np.all(fit.x[~fit.used] < fit.threshold)
    late = fit_curves([_rise(0)], FitOptions(n_boot=50, warmup=0.6))
    assert late.threshold == pytest.approx(10.0 * 100.0**0.6) and "first 60%" in late.exclusion_rule


def test_prior_is_learned_on_whole_run_fits():
    """The prior on B describes a run's whole shape: learned on fits of the late run only (--warmup 0.6), B of
    these true-B = 1 rises read 1.25; on whole-run fits 1.00."""
    prior = learn_priors([_rise(s) for s in range(8)])
    assert abs(prior.log_b[0]) < 0.1, np.exp(prior.log_b[0])


def test_cli_warmup_option(tmp_path):
    c = _rise(1)
    csv = tmp_path / "run.csv"
    csv.write_text("x,y\n" + "".join(f"{x:g},{y:.5f}\n" for x, y in zip(c.x, c.y)))
    runner = CliRunner()
    rules = {}
    for extra in ([], ["--warmup", "0.6"]):
        r = runner.invoke(cli, ["fit", str(csv), "--json", "--n-boot", "50", *extra])
        assert r.exit_code == 0, r.output
        (run,) = json.loads(r.stdout)["runs"]
        rules[tuple(extra)] = run["excluded"]
    assert "first 10%" in rules[()]["rule"] and rules[()]["below"] == pytest.approx(10.0 * 100.0**0.1)
    assert "first 60%" in rules[("--warmup", "0.6")]["rule"]
    assert rules[("--warmup", "0.6")]["below"] == pytest.approx(10.0 * 100.0**0.6)
    r = runner.invoke(cli, ["fit", str(csv), "--warmup", "1.5"])
    assert r.exit_code == 2 and "--warmup" in r.output


def test_a_short_run_keeps_enough_points_to_score_its_own_forecasts():
    """A 60% share (--warmup 0.6) would leave 8 of 21 points here, too few for a rolling origin (extrapolation.py):
    the threshold drops to keep the last 15, so the sigmoid is weighed against the level; the 10% rule is unchanged."""
    from scalerl.curvefit.exclusion import MIN_WARMUP_KEEP

    x = np.arange(0, 201, 10.0)
    y = 0.2 + 0.4 / (1.0 + (50.0 / np.maximum(x, 1e-9)) ** 1.2)
    fit = fit_curves([Curve("short", x, y, "step", "pass_rate")], FitOptions(n_boot=50, warmup=0.6))
    assert MIN_WARMUP_KEEP == 15 and fit.n_points == 15 and fit.threshold == x[-15]
    assert "first 60%" in fit.exclusion_rule and "keep the last 15" in fit.exclusion_rule
    assert fit.average is not None and np.isfinite(fit.average.inner_mse["level"])
    old = fit_curves([Curve("short", x, y, "step", "pass_rate")], FitOptions(n_boot=50, warmup=0.1))
    assert old.threshold == pytest.approx(10.0 * 20.0**0.1) and "lowered" not in old.exclusion_rule
    # A run with fewer than 15 positive points keeps them all.
    tiny = fit_curves([Curve("tiny", x[:13], y[:13], "step", "pass_rate")], FitOptions(n_boot=50, warmup=0.6))
    assert tiny.n_points == 12 and "keep the last 12" in tiny.exclusion_rule


def test_one_or_two_origins_do_not_narrow_the_intervals():
    """Two rolling origins (a 12-point fit) measure the error growth on too little: k stays at 5 K_FLOOR, as with
    none, whatever the origins measured; three origins (15 points) set it."""
    from scalerl.curvefit.extrapolation import K_FLOOR, MIN_ORIGINS, error_model

    x = np.arange(1.0, 16.0)
    y = 0.5 + 0.001 * np.sin(x)  # prefixes forecast the rest almost perfectly: a measured k near 0
    full = {m: np.full(15 - m, 0.5) for m in (8, 10, 12)}
    three = error_model(x, y, full, y - 0.5)
    two = error_model(x, y, {m: full[m] for m in (10, 12)}, y - 0.5)
    assert MIN_ORIGINS == 3 and three.n_origins == 3 and two.n_origins == 2
    assert three.k_measured < K_FLOOR and three.k == K_FLOOR
    assert two.k_measured < K_FLOOR and two.k == pytest.approx(5 * K_FLOOR)
