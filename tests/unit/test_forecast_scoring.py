"""Noise weighting, forecast averaging, the naive forecasters and the interval score (issue 24)."""

import numpy as np
import pytest

from scalerl.curvefit.backtest import backtest
from scalerl.curvefit.curves import sigmoid
from scalerl.curvefit.data import Curve
from scalerl.curvefit.fit import FitOptions, fit_curves
from scalerl.curvefit.naive import interval_score, last_mean, last_value
from scalerl.curvefit.sigmoid_fit import fit_sigmoid

TRUE = dict(A=0.70, B=1.4, c_mid=400.0, R0=0.20)


def binomial_curve(seed, n_of, x_max=3000.0, points=120):
    """A sigmoid observed through mean@k evaluations: each point's pass rate is Binomial(n, p) / n."""
    rng = np.random.default_rng(seed)
    x = np.linspace(x_max / points, x_max, points)
    p = sigmoid(x, **TRUE)
    n = n_of(rng, points)
    return x, rng.binomial(n, p) / n, n


def varied_counts(rng, points):
    # Evaluations of uneven size (a quick 32-sample check between full 4,096-sample evaluations).
    return np.where(rng.random(points) < 0.7, 32, 4096)


def curve_error(params, x):
    return float(np.sqrt(np.mean((params(x) - sigmoid(x, **TRUE)) ** 2)))


def test_noise_weighting_recovers_the_true_curve_better_than_unweighted():
    """Known binomial noise: weighting each point by n / (p (1 - p)) fits the true curve and its ceiling better."""
    err_w, err_u, a_w, a_u = [], [], [], []
    for seed in range(20):
        x, y, n = binomial_curve(seed, varied_counts)
        p = np.clip(y, 0.05, 0.95)
        w = n / (p * (1 - p))
        fw = fit_sigmoid(x, y, TRUE["R0"], w=w / w.mean())
        fu = fit_sigmoid(x, y, TRUE["R0"])
        grid = np.geomspace(x[0], x[-1] * 10, 200)  # in the data and a decade beyond
        err_w.append(curve_error(fw, grid)), err_u.append(curve_error(fu, grid))
        a_w.append(abs(fw.A - TRUE["A"])), a_u.append(abs(fu.A - TRUE["A"]))
    # Measured: curve error 0.0039 vs 0.0117 and |A error| 0.0050 vs 0.0171 (medians over 20 seeds).
    assert np.median(err_w) < 0.6 * np.median(err_u), (np.median(err_w), np.median(err_u))
    assert np.median(a_w) < 0.6 * np.median(a_u), (np.median(a_w), np.median(a_u))


def test_fit_curves_uses_the_sample_counts():
    """The same points with and without their counts: fit_curves weights them only when the counts are known."""
    better = 0
    for seed in range(8):
        x, y, n = binomial_curve(100 + seed, varied_counts)
        known = Curve("run", x, y, "step", "pass_rate", samples=n.astype(float))
        unknown = Curve("run", x, y, "step", "pass_rate")
        fk = fit_curves([known], FitOptions(n_boot=50, interval="bootstrap", prior=None))
        fu = fit_curves([unknown], FitOptions(n_boot=50, interval="bootstrap", prior=None))
        assert fk.noise_sd is not None and fu.noise_sd is None
        grid = np.geomspace(x[0], x[-1] * 10, 200)
        better += curve_error(fk.params, grid) < curve_error(fu.params, grid)
    assert better >= 6, better


def _flat(seed, level=0.55, noise=0.012, n=120):
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 3000.0, n + 1)
    y = level + rng.normal(0, noise, n + 1)
    y[0] = 0.3  # the model before RL; every later evaluation sits on the plateau
    return Curve(f"flat-{seed}", x, y, "step", "pass_rate")


def _rising(seed, n=120):
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 3000.0, n + 1)
    B, c_mid = rng.uniform(0.9, 1.8), rng.uniform(300, 1500)
    y = sigmoid(x, 0.75, B, c_mid, 0.2) + rng.normal(0, 0.01, n + 1)
    y[0] = 0.2
    return Curve(f"rise-{seed}", x, y, "step", "pass_rate")


@pytest.fixture(scope="module")
def synthetic_backtests():
    """Per backtest: (errors of the average, the sigmoid alone, the level alone) on the points after the cut."""
    out = []
    for c in [_flat(s) for s in range(8)] + [_rising(s) for s in range(8)]:
        for frac in (0.3, 0.5):
            cut = c.x[0] + frac * (c.x[-1] - c.x[0])
            head = Curve(c.name, c.x[c.x <= cut], c.y[c.x <= cut], c.x_label, c.y_label)
            xt, yt = c.x[c.x > cut], c.y[c.x > cut]
            fit = fit_curves([head], FitOptions(n_boot=50))
            level = fit.average.curves[fit.average.names.index("level")]
            out.append((np.abs(fit.forecast(xt) - yt), np.abs(fit.params(xt) - yt), np.abs(level(xt) - yt)))
    return out


AVERAGE_MARGIN = 0.10  # the average may lose at most 10% of error to the better member, pooled over the set


def test_averaging_never_scores_much_worse_than_its_best_member(synthetic_backtests):
    avg, sig, lev = (np.mean(np.concatenate(col)) for col in zip(*synthetic_backtests))
    # Measured: average 0.0142, sigmoid 0.0135, level 0.0554 (warm-up 10%, the default; at 60%: 0.0176, 0.0165). Flat
    # runs favour the level, rising ones the sigmoid; no single member wins both, the average must stay close to
    # whichever is better.
    assert avg <= (1 + AVERAGE_MARGIN) * min(sig, lev), (avg, sig, lev)


def test_averaging_follows_the_member_that_forecast_the_run(synthetic_backtests):
    """Per backtest the average is never far behind the better member (a weight bug would put it behind the worse)."""
    behind = [a.mean() - min(s.mean(), v.mean()) for a, s, v in synthetic_backtests]
    gap = [abs(s.mean() - v.mean()) for _, s, v in synthetic_backtests]
    assert np.mean(np.array(behind) <= 0.5 * np.array(gap) + 1e-3) >= 0.8


def test_interval_score_is_width_plus_twenty_times_the_miss():
    s = interval_score([0.5, 0.9, 0.1], [0.4, 0.4, 0.4], [0.6, 0.6, 0.6], 0.90)
    assert np.allclose(s, [0.2, 0.2 + 20 * 0.3, 0.2 + 20 * 0.3])


def test_naive_forecasters_and_their_intervals():
    y = np.array([0.50, 0.52, 0.49, 0.51, 0.50, 0.53, 0.48, 0.52, 0.50, 0.55])
    pred, lo, hi = last_value(y, 4, 0.9)
    assert np.all(pred == 0.55) and np.all(lo < 0.55) and np.all(hi > 0.55)
    steps = np.diff(y)
    assert np.isclose(hi[0] - pred[0], np.percentile(steps, 95)) and np.isclose(
        pred[0] - lo[0], -np.percentile(steps, 5)
    )
    pred3, lo3, hi3 = last_mean(y, 2, 0.9)
    assert np.isclose(pred3[0], np.mean(y[-3:])) and lo3[0] < pred3[0] < hi3[0]
    # Never outside the metric's range.
    _, lo_b, hi_b = last_value(np.array([0.99, 0.9, 1.0, 0.92, 1.0]), 1, 0.9)
    assert hi_b[0] <= 1.0


def test_backtest_reports_interval_score_and_naive_comparison():
    x, y, n = binomial_curve(3, lambda rng, k: np.full(k, 500))
    c = Curve("run", x, y, "step", "pass_rate", samples=n.astype(float))
    bt = backtest([c], FitOptions(n_boot=100), 0.5)
    assert set(bt["naive"]) == {"last value", "last-3 mean"}
    assert bt["interval_score"] >= bt["mean_width"] > 0
    best = min(v["mae"] for v in bt["naive"].values())
    assert bt["beats_naive"] == (bt["mae"] < best)
    assert bt["sigmoid_beats_persistence"] in (True, False)


def test_persistence_share_moves_only_the_level_weight_to_the_last_point():
    """The corpus share (average.py) hands part of the recent level's weight to the last fitted point: the sigmoid's
    weight is untouched, and beyond the data the forecast moves by share x level weight x (last point - level)."""
    c = _flat(3)
    c.y[-1] = c.y[-1] + 0.05  # a last point well off the level, so that the move is visible
    base = fit_curves([c], FitOptions(n_boot=30, persistence=0.0))
    for share in (0.5, 0.8):
        fit = fit_curves([c], FitOptions(n_boot=30, persistence=share))
        w_level = base.average.weight("level")
        assert w_level > 0.2  # a plateau: the level carries much of the forecast
        assert np.isclose(fit.average.weight("sigmoid"), base.average.weight("sigmoid"))
        assert np.isclose(fit.average.weight("last value"), share * w_level)
        assert np.isclose(fit.average.weight("level"), (1 - share) * w_level)
        level = base.average.curves[base.average.names.index("level")].value
        beyond = np.array([4000.0, 9000.0])
        moved = fit.forecast(beyond) - base.forecast(beyond)
        assert np.allclose(moved, share * w_level * (c.y[-1] - level))
        assert np.allclose(fit.forecast(c.x[1:5]), base.forecast(c.x[1:5]))  # within the data: the fitted sigmoid


def test_persistence_share_leaves_a_clean_rise_to_its_sigmoid():
    """A run whose own prefixes the sigmoid forecasts well gives the level (and so the last point) almost nothing."""
    c = _rising(2)
    head = Curve(c.name, c.x[c.x <= 1500], c.y[c.x <= 1500], c.x_label, c.y_label)
    base = fit_curves([head], FitOptions(n_boot=30, persistence=0.0))
    fit = fit_curves([head], FitOptions(n_boot=30, persistence=0.8))
    beyond = np.array([2000.0, 3000.0])
    assert fit.average.weight("last value") < 0.05
    assert np.max(np.abs(fit.forecast(beyond) - base.forecast(beyond))) < 0.002


def clean_run(seed, shape, points=40, sd=0.01):
    """A run evaluated at even steps from step 0 (x = 0, before training), noise sd 0.01 (a 2,000-sample evaluation
    near p = 0.4): a sigmoid in log-compute, or a saturating exponential in compute, which the model only
    approximates."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 3000.0, points)
    r0, a = rng.uniform(0.1, 0.3), rng.uniform(0.5, 0.75)
    if shape == "sigmoid":
        true = sigmoid(x, A=a, B=rng.uniform(1.0, 2.5), c_mid=rng.uniform(0.15, 0.8) * 3000.0, R0=r0)
    else:
        true = a - (a - r0) * np.exp(-x / (rng.uniform(0.1, 0.6) * 3000.0))
    return x, np.clip(true + rng.normal(0, sd, points), 0.0, 1.0)


@pytest.mark.parametrize("shape", ["sigmoid", "exponential"])
def test_clean_rising_runs_beat_both_naive_forecasters_by_a_wide_margin(shape):
    """Where a run moves after the cut and follows a smooth shape, the forecast is far better than persistence: the
    goal of issue 24 (beat both naive forecasters on 70% of runs, median error ratio 0.8) with room to spare.
    Measured (bench/forecast_limits.py section 8, 40 runs a shape at this noise): 1.00 / 0.25 and 0.93 / 0.30."""
    beats, ratios = [], []
    for seed in range(10):
        x, y = clean_run(seed, shape)
        half = len(x) // 2
        head = Curve("clean", x[:half], y[:half])
        future = y[half:]
        fit = fit_curves([head], FitOptions(n_boot=20))
        err = np.mean(np.abs(fit.forecast(x[half:]) - future))
        naive = min(np.mean(np.abs(f(head.y, len(future), 0.9)[0] - future)) for f in (last_value, last_mean))
        beats.append(err < naive)
        ratios.append(err / naive)
    # Here: 1.0 / 0.20 and 0.8 / 0.30; with the members weighted equally (WEIGHT_POWER 0) 1.0 / 0.58 and 0.9 / 0.64.
    assert np.mean(beats) >= 0.7 and np.median(ratios) <= 0.5, (np.mean(beats), np.median(ratios))
