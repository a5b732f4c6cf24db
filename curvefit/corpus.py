"""Corpus-level learning: quantities estimated over many fitted runs (the shape prior of priors.py).

Kept apart from priors.py because it fits runs (fit.py), while fit.py reads the prior: one module holding both
would import itself in a circle.
"""

from __future__ import annotations

import numpy as np

from .exclusion import RANGE_FRACTION
from .fit import FitOptions, fit_curves
from .priors import SD_FLOOR, ShapePrior


def learn_priors(curves, bound: float = 1.0) -> ShapePrior:
    """Robust moments of log B and the headroom over unpenalised fits of whole runs.

    The prior describes a run's whole shape, so its fits keep the rise (warm-up share RANGE_FRACTION, 10% of the
    log range), whatever the warm-up of the fits it is applied to. Learned instead on fits of the late run (60%, the
    default of issue 24's second to fifth rounds), it made the forecasts worse, leave-one-source-out
    (bench/bench_forecast.py): interval score 0.57 against 0.56 of the naive forecasters' for that default, 0.75
    against 0.62 for fits at 10%."""
    logb, head = [], []
    for c in curves:
        try:
            opts = FitOptions(n_boot=50, interval="bootstrap", prior=None, bound=bound, warmup=RANGE_FRACTION)
            f = fit_curves([c], opts)
        except (ValueError, RuntimeError):
            continue
        p = f.params
        logb.append(np.log(p.B))
        head.append((p.A - p.R0) / max(bound - p.R0, 1e-9))

    def moments(v, floor):
        v = np.asarray(v, float)
        med = float(np.median(v))
        return med, max(float(1.4826 * np.median(np.abs(v - med))), floor)

    return ShapePrior(moments(logb, SD_FLOOR[0]), moments(head, SD_FLOOR[1]), n_runs=len(logb))
