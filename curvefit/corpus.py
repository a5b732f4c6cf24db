"""Corpus-level learning: quantities estimated over many fitted runs (the shape prior of priors.py).

Kept apart from priors.py because it fits runs (fit.py), while fit.py reads the prior: one module holding both
would import itself in a circle.
"""

from __future__ import annotations

import numpy as np

from .fit import FitOptions, fit_curves
from .priors import SD_FLOOR, ShapePrior


def learn_priors(curves, bound: float = 1.0) -> ShapePrior:
    """Robust moments of log B and the headroom over unpenalised fits of whole runs."""
    logb, head = [], []
    for c in curves:
        try:
            f = fit_curves([c], FitOptions(n_boot=50, interval="bootstrap", prior=None, bound=bound))
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
