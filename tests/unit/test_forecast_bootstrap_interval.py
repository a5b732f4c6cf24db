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
