"""A metric on another scale (`--bound 100`: percent) is the same run: the fit, its noise and its intervals scale
with the metric. The extrapolation error's floor and cap on k (extrapolation.K_FLOOR, K_CAP) are in pass-rate
units and the binomial noise read p (1 - p) off the raw value, so the percent copy of a run came out with a
forecast interval 100x narrower, relative to the scale, far beyond the data, and 1/100 of its noise."""

import numpy as np
import pytest

from scalerl.curvefit.curves import sigmoid
from scalerl.curvefit.data import clean_curve
from scalerl.curvefit.fit import FitOptions, fit_curves
from scalerl.curvefit.forecast import forecast_budget


def _run(scale: float, samples):
    x = np.arange(0.0, 60.0)
    rng = np.random.default_rng(0)
    y = sigmoid(np.maximum(x, 1e-9), 0.7, 1.5, 20.0, 0.2) + rng.normal(0.0, 0.01, len(x))
    n = None if samples is None else np.full(len(x), samples)
    return clean_curve("run", x, np.round(y * scale, 12), "step", "pass_rate", samples=n)


@pytest.mark.parametrize("samples", [None, 500.0])
def test_percent_copy_of_a_run_scales_its_fit_and_intervals(samples):
    unit = fit_curves([_run(1.0, samples)], FitOptions(n_boot=100))
    pct = fit_curves([_run(100.0, samples)], FitOptions(n_boot=100, bound=100.0))
    assert pct.params.A == pytest.approx(100 * unit.params.A, rel=1e-4)
    assert pct.extrap.k == pytest.approx(100 * unit.extrap.k, rel=1e-3)
    if samples is not None:
        assert pct.noise_sd == pytest.approx(100 * unit.noise_sd, rel=1e-6)
    for budget in (100.0, 1e4):
        u, p = forecast_budget(unit, budget), forecast_budget(pct, budget)
        assert p["pass_rate"] == pytest.approx(100 * u["pass_rate"], rel=1e-3)
        assert p["ci"] == pytest.approx([100 * v for v in u["ci"]], rel=1e-3, abs=1e-3)
