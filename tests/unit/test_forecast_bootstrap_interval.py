"""`ci_bootstrap` and `widening` of `scalerl forecast` (docs/cli-json.md): the bootstrap's prediction interval alone,
around the point forecast, and how much wider `ci` is than it. They were the band of the mean curve around the
sigmoid: within the data the prediction interval read "2-4x the bootstrap's" with no extrapolation at all, and
beyond it an averaged (level) forecast lay outside its own ci_bootstrap."""

from pathlib import Path

import pytest

from scalerl.curvefit.fit import FitOptions, fit_curves
from scalerl.curvefit.forecast import forecast_budget
from scalerl.curvefit.readers import ReadOptions, read_sources

DATA = Path(__file__).parents[1] / "data" / "cs336_lr_sweep_subset.csv"


@pytest.fixture(scope="module")
def level_fit():
    # The 5e-5 learning rate peaks and declines: beyond the data its forecast leans on the recent level.
    (run,) = [c for c in read_sources([DATA], ReadOptions()) if c.name.endswith("5e-5")]
    return fit_curves([run], FitOptions(n_boot=200))


def test_ci_bootstrap_holds_the_point_forecast(level_fit):
    for budget in (2 * level_fit.x_last, 100 * level_fit.x_last, 1e6 * level_fit.x_last):
        out = forecast_budget(level_fit, budget)
        assert out["basis"] == "recent level"
        lo, hi = out["ci_bootstrap"]
        assert lo <= out["pass_rate"] <= hi, (budget, out["pass_rate"], out["ci_bootstrap"])
        assert out["ci"][0] <= lo and hi <= out["ci"][1]


def test_no_widening_where_nothing_is_extrapolated(level_fit):
    for budget in (level_fit.x_last, 0.5 * level_fit.x_last):
        out = forecast_budget(level_fit, budget)
        assert out["widening"] == pytest.approx(1.0), out
        assert out["ci_bootstrap"] == pytest.approx(out["ci"])


def test_a_flat_run_has_no_widening_ratio_but_says_why():
    """A perfectly flat run's bootstrap interval has no width: dividing by it read "213448946541.2x wider than the
    bootstrap's alone". The widening is undefined (null in the JSON) and the warning says the bootstrap interval has
    no width; the interval itself is the extrapolation allowance, as before."""
    from scalerl.curvefit.data import clean_curve

    flat = clean_curve("flat", [10.0 * i for i in range(40)], [0.5] * 40, "step", "pass_rate", [])
    fit = fit_curves([flat], FitOptions(n_boot=100))
    far = forecast_budget(fit, 4000.0)
    assert far["widening"] is None
    lo, hi = far["ci"]
    assert hi - lo > 0.01  # still widened for the distance
    (w,) = [w for w in far["warnings"] if w.startswith("budget 4000 is")]
    assert "the bootstrap interval has no width" in w and "wider than" not in w
    assert forecast_budget(fit, fit.x_last)["widening"] is None  # within the data too: 0 / 0
