"""Forecast intervals must be calibrated: neither too narrow (bets lost) nor vacuous (no information).

Synthetic curves have a known true shape; the real curves in tests/data are public RL runs nobody here generated.
"""

import numpy as np
import pytest

from scalerl.curvefit.backtest import backtest, forecast_points
from scalerl.curvefit.curves import sigmoid
from scalerl.curvefit.data import Curve, clean_curve
from scalerl.curvefit.fit import FitOptions, fit_curves
from scalerl.curvefit.forecast import forecast_budget
from scalerl.curvefit.readers import ReadOptions, read_sources

LEVEL = 0.90


def ar1_curve(seed, A, B, c_mid, R0=0.2, n=150, noise=0.012, rho=0.5, x_max=5000.0):
    """A sigmoid with autocorrelated evaluation noise, as along a real run (step axis from 0)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, x_max, n + 1)
    e = np.zeros(n + 1)
    for i in range(1, n + 1):
        e[i] = rho * e[i - 1] + np.sqrt(1 - rho**2) * rng.normal(0, noise)
    y = sigmoid(x, A, B, c_mid, R0) + e
    y[0] = R0
    return clean_curve(f"syn-{seed}", x, y, "step", "pass_rate")


def later_points(c: Curve, frac: float, k: int = 12):
    cut = c.x[0] + frac * (c.x[-1] - c.x[0])
    head = Curve(c.name, c.x[c.x <= cut], c.y[c.x <= cut], c.x_label, c.y_label)
    later = np.flatnonzero(c.x > cut)
    pick = later[np.unique(np.round(np.linspace(0, len(later) - 1, min(k, len(later)))).astype(int))]
    return head, c.x[pick], c.y[pick]


def pooled(curves, interval="selfcal", cuts=(0.3, 0.5, 0.7)):
    inside, width, err = [], [], []
    for c in curves:
        for frac in cuts:
            head, xt, yt = later_points(c, frac)
            fit = fit_curves([head], FitOptions(n_boot=150, level=LEVEL, interval=interval))
            pred, lo, hi = forecast_points(fit, xt)
            inside.append((yt >= lo) & (yt <= hi))
            width.append(hi - lo)
            err.append(np.abs(pred - yt))
    return np.concatenate(inside).mean(), np.concatenate(width).mean(), np.concatenate(err).mean()


@pytest.fixture(scope="module")
def synthetic_runs():
    rng = np.random.default_rng(7)
    runs = []
    for seed in range(12):
        A = rng.uniform(0.5, 0.8)
        runs.append(ar1_curve(seed, A=A, B=rng.uniform(0.8, 2.0), c_mid=rng.uniform(150, 900)))
    return runs


def test_synthetic_coverage_is_calibrated_from_both_sides(synthetic_runs):
    cov, width, mae = pooled(synthetic_runs)
    # Too narrow fails the first bound; intervals made vacuous (e.g. always [0, 1]) fail the others.
    assert 0.84 <= cov <= 0.98, cov  # measured 0.89 (0.91 with the warm-up at 10%); the bootstrap alone gives 0.82
    assert width < 0.12, width
    assert mae < 0.03, mae


def test_bootstrap_alone_is_too_narrow_on_synthetic_extrapolation(synthetic_runs):
    """The noise-only band covers less than the widened one: the extrapolation term is doing work."""
    cov_boot, width_boot, _ = pooled(synthetic_runs[:6], interval="bootstrap")
    cov_new, width_new, _ = pooled(synthetic_runs[:6])
    assert width_new > width_boot and cov_new > cov_boot


@pytest.fixture(scope="module")
def real_curves(data_dir_module):
    names = ("spurious_rewards_subset.csv", "tanzelin_flops_subset.csv", "cs336_lr_sweep_subset.csv")
    curves = read_sources([data_dir_module / n for n in names], ReadOptions())
    curves += read_sources([data_dir_module / "deepgrpo_scale_budget.csv"], ReadOptions())
    return curves


@pytest.fixture(scope="module")
def data_dir_module():
    from conftest import DATA

    return DATA


def test_real_curves_coverage_near_nominal(real_curves):
    assert len(real_curves) == 14
    cov, width, mae = pooled(real_curves)
    assert 0.78 <= cov <= 0.97, cov  # measured 0.85 (0.86 with the warm-up at 10%); the bootstrap alone gives 0.70
    assert width < 0.25, width


def test_unbent_curve_forecast_is_honest():
    """Only the early, near-linear rise: the forecast must not be a confident extrapolated number."""
    c = ar1_curve(3, A=0.85, B=1.2, c_mid=40000.0, noise=0.004, x_max=4000.0)
    fit = fit_curves([c], FitOptions(n_boot=200))
    f = forecast_budget(fit, 100000.0)
    truth = float(sigmoid(100000.0, 0.85, 1.2, 40000.0, 0.2))
    assert f["ci"][0] <= truth <= f["ci"][1], (f["ci"], truth)
    # Not a confident number: the interval spans more than the whole rise seen so far (0.04), many times over.
    assert f["ci"][1] - f["ci"][0] > 0.3, f["ci"]
    assert any("beyond the last fitted point" in w for w in f["warnings"])
    assert any("never bend" in w or "not identified" in w for w in fit.warnings + f["warnings"])


def test_profile_likelihood_of_a():
    good = fit_curves([ar1_curve(1, A=0.62, B=1.5, c_mid=300.0)], FitOptions(n_boot=100))
    lo, hi = good.profile_A["interval"]
    assert lo <= 0.62 <= hi and hi - lo < 0.05 and not good.profile_A["reaches_bound"]
    unbent = fit_curves([ar1_curve(2, A=0.9, B=1.0, c_mid=1e6, noise=0.004)], FitOptions(n_boot=100))
    assert unbent.profile_A["reaches_bound"]


def test_backtest_reports_calibration():
    c = ar1_curve(5, A=0.62, B=1.5, c_mid=300.0)
    bt = backtest([c], FitOptions(n_boot=150), 0.5)
    assert bt["level"] == LEVEL and 0.0 <= bt["coverage"] <= 1.0
    assert (bt["calibration_warning"] is None) == (abs(bt["coverage"] - LEVEL) <= 0.10)


def test_measured_error_growth_is_capped_at_the_no_evidence_k():
    """Prefixes that forecast a steep early rise badly measure a k of 0.5-1.4 per unit of log-compute; the intervals
    use at most K_CAP, the k the default gives a run with no measurement (FEW_ORIGINS_FACTOR x K_FLOOR), which
    leave-one-source-out scored 0.77 of the naive interval score against 0.90 uncapped (docs/curvefit.md). A moderate
    k passes through, and the cap does not move with a swept floor."""
    from scalerl.curvefit.extrapolation import FEW_ORIGINS_FACTOR, K_CAP, K_FLOOR, bounded_k, error_model

    assert K_CAP == pytest.approx(FEW_ORIGINS_FACTOR * K_FLOOR)
    x = np.arange(1.0, 21.0)
    y = np.full(20, 0.5)
    wild = {m: np.full(20 - m, 0.8) for m in (8, 11, 14, 17)}  # every prefix overshoots by 0.3
    model = error_model(x, y, wild, np.zeros(20))
    assert model.n_origins == 4 and model.k_measured > 0.4
    assert model.k == pytest.approx(K_CAP)
    assert bounded_k(0.05, 4) == pytest.approx(0.05)
    assert bounded_k(0.001, 4) == pytest.approx(K_FLOOR)
    assert bounded_k(0.001, 2) == bounded_k(3.0, 4) == pytest.approx(K_CAP)
    assert bounded_k(3.0, 4, floor=0.01) == pytest.approx(K_CAP)
    assert bounded_k(0.0, 2, floor=0.01) == pytest.approx(0.05)


def test_prediction_band_stays_in_the_metric_range():
    """A forecast near 0 with a wide shape error must not claim pass rates below 0 (or above the bound)."""
    x = np.arange(1.0, 15.0)
    y = np.array([0.3, 0.25, 0.2, 0.12, 0.1, 0.06, 0.05, 0.03, 0.02, 0.02, 0.01, 0.01, 0.0, 0.0])
    fit = fit_curves([Curve("collapse", x, y, "step", "pass_rate")], FitOptions(n_boot=100))
    lo, hi = fit.prediction_band(np.array([30.0, 100.0, 1000.0]))
    assert np.all(lo >= 0.0) and np.all(hi <= 1.0) and np.all(lo <= hi)
