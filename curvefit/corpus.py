"""Corpus-level learning: quantities estimated over many fitted runs (the shape prior of priors.py).

Kept apart from priors.py because it fits runs (fit.py), while fit.py reads the prior: one module holding both
would import itself in a circle.
"""

from __future__ import annotations

import numpy as np

from .exclusion import RANGE_FRACTION
from .fit import FitOptions, fit_curves
from .priors import CORPUS, PEERS, SD_FLOOR, ShapePrior

# A prior from the other runs of one sweep needs at least this many of them fitted (two: a median and a spread).
MIN_PEERS = 2


def run_shape(c, bound: float = 1.0) -> tuple[float, float] | None:
    """(log B, headroom) of an unpenalised fit of the run, or None when it cannot be fitted.

    The prior describes a run's whole shape, so its fits keep the rise (warm-up share RANGE_FRACTION, 10% of the
    log range), whatever the warm-up of the fits it is applied to. Learned instead on fits of the late run (60%, the
    default of issue 24's second to fifth rounds), it made the forecasts worse, leave-one-source-out
    (bench/bench_forecast.py): interval score 0.57 against 0.56 of the naive forecasters' for that default, 0.75
    against 0.62 for fits at 10%."""
    try:
        opts = FitOptions(n_boot=50, interval="bootstrap", prior=None, bound=bound, warmup=RANGE_FRACTION)
        p = fit_curves([c], opts).params
    except (ValueError, RuntimeError):  # InputError is a ValueError: too few points, a flat run
        return None
    return float(np.log(p.B)), float((p.A - p.R0) / max(bound - p.R0, 1e-9))


def prior_from_shapes(shapes, source: str = CORPUS) -> ShapePrior:
    """Robust moments (median, 1.4826 x MAD, floored at SD_FLOOR) of (log B, headroom) pairs."""

    def moments(v, floor):
        v = np.asarray(v, float)
        med = float(np.median(v))
        return med, max(float(1.4826 * np.median(np.abs(v - med))), floor)

    return ShapePrior(
        moments([s[0] for s in shapes], SD_FLOOR[0]),
        moments([s[1] for s in shapes], SD_FLOOR[1]),
        n_runs=len(shapes),
        source=source,
    )


def learn_priors(curves, bound: float = 1.0) -> ShapePrior:
    """The shape prior of a corpus: robust moments of log B and the headroom over unpenalised fits of whole runs."""
    return prior_from_shapes([s for c in curves if (s := run_shape(c, bound)) is not None])


def peer_priors(groups, fallback: ShapePrior | None, bound: float = 1.0) -> list[ShapePrior | None]:
    """For each group of curves (a run, or the seeds of one), the shape prior of the *other* groups' runs.

    groups: list of lists of curves, as fitted side by side (one sweep, one file, the variants of one recipe). Runs
    of one sweep share their task, model family and evaluation, so their shapes are nearer each other than the
    corpus's; a group with fewer than MIN_PEERS fitted peers keeps the fallback (the corpus prior). Scored in
    bench/bench_forecast.py ("peers' prior"): docs/curvefit.md, issue 24's seventh round."""
    shapes = [[s for c in g if (s := run_shape(c, bound)) is not None] for g in groups]
    out = []
    for i in range(len(groups)):
        others = [s for j, g in enumerate(shapes) if j != i for s in g]
        out.append(prior_from_shapes(others, PEERS) if len(others) >= MIN_PEERS else fallback)
    return out
