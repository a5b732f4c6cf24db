"""Forecast averaging: forecasters of a run's future weighted by how well each forecast the run itself.

Which curve extrapolates a run best is not knowable from a good in-sample fit: a sigmoid fitted before the bend
can put the ceiling anywhere, and a noisy plateau is best held flat. Each member (fit.py passes the sigmoid and the
recent level; the power law was tried and scored worse) is refitted at the rolling origins of extrapolation.py and
forecasts the rest of the run; its weight is the inverse square of its mean squared error there (a sharpened Bates
and Granger 1969 combination), so a member that forecast the run's own future badly counts for little, without the
hard switch of a single winner (a switch turns a small difference in the prefix scores into a large jump in the
forecast). A corpus-level share of the level's weight can then go to the last point (PERSISTENCE_SHARE, off by
default since issue 24's sixth round).

Beyond the last fitted point the forecast is the weighted mean of the members; within the data it stays the
fitted sigmoid. The intervals are calibrated on the average's own prefix errors (extrapolation.error_model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .extrapolation import Level, rolling_forecasts

# Below this, prefix errors are below any evaluation's resolution; the floor keeps a perfect member from taking
# every weight on a few lucky origins.
MSE_FLOOR = 1e-6
# Weights proportional to mse^-2. The inverse (power 1) left a fifth of the weight on the level when a rising run's
# sigmoid forecast it five times better (synthetic rises: error 0.023 against the sigmoid's 0.018; power 2: 0.018);
# on the development corpus, leave-one-source-out, powers 1 and 2 score the same (interval score 0.1008 vs 0.1004).
WEIGHT_POWER = 2.0
# The share of the recent level's weight handed to the last fitted point: a corpus-level constant on top of the
# per-run weights (stacking). Most runs keep rising after a cut, so the mean of the last n^(1/3) points lags and the
# last point lags least; on backtests cut at 0.3, 0.5 and 0.7 of the compute range the interval score chose 0.8
# (issue 24's second to fifth rounds). But the last point carries its own evaluation noise into every later point:
# scored as issue 24 scores its held-back curves (cut at half the points, every later point), a share of 0.8 beat both
# naive forecasters on as many runs or fewer than none at every run length tried (all points: 0.44 against 0.47), at
# interval scores within 1% (docs/curvefit.md, sixth round). FitOptions.persistence still sets it.
PERSISTENCE_SHARE = 0.0
LAST = "last value"


@dataclass(frozen=True)
class Average:
    names: tuple[str, ...]
    curves: tuple  # callables c -> R, fitted on the full run
    weights: tuple[float, ...]
    inner_mse: dict  # member -> mean squared error of its prefix forecasts (nan: never scored)

    def __call__(self, c):
        c = np.asarray(c, float)
        return sum(w * np.asarray(f(c), float) for w, f in zip(self.weights, self.curves) if w > 0)

    def weight(self, name: str) -> float:
        return self.weights[self.names.index(name)] if name in self.names else 0.0


def average_members(x, y, members: dict[str, tuple[Callable, Callable]], w=None, exclude=(), persistence: float = 0.0):
    """members: name -> (prefix fitter(x, y) or fitter(x, y, w) for the sigmoid, the full-run curve).

    Returns (Average, forecasts of the average at every origin: {m: prediction of y[m:]}). Members in `exclude`
    are scored (their inner_mse is reported) but get no weight. persistence: the share of the "level" member's
    weight moved to the last point (LAST). The returned origin forecasts leave it out: the intervals are calibrated
    on them (extrapolation.error_model), and with the last point in them its own noise entered every origin's error
    at every distance and widened the intervals more than the better centre gained (measured with a share of the
    whole average, 0.4: interval score 0.66 of the naive forecasters' against 0.62 without the share).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    scored = {}
    for name, (fitter, _) in members.items():
        takes_w = w is not None and name == "sigmoid"
        scored[name] = rolling_forecasts(x, y, fitter, w if takes_w else None)
    common = set.intersection(*(set(f) for f in scored.values())) if scored else set()
    mse = {
        n: float(np.mean([np.mean((f[m] - y[m:]) ** 2) for m in common])) if common else np.nan
        for n, f in scored.items()
    }
    names = tuple(members)
    raw = np.array(
        [0.0 if n in exclude or not np.isfinite(mse[n]) else max(mse[n], MSE_FLOOR) ** -WEIGHT_POWER for n in names]
    )
    if raw.sum() <= 0:
        # Nothing scored (too few points for an origin): the sigmoid alone, as before averaging existed.
        raw = np.array([1.0 if n == "sigmoid" else 0.0 for n in names])
    weights = raw / raw.sum()
    curves = tuple(members[n][1] for n in names)
    forecasts = {m: sum(wt * scored[n][m] for wt, n in zip(weights, names) if wt > 0) for m in common}
    if persistence > 0 and "level" in names and len(y):
        mse[LAST] = float(np.mean([np.mean((y[m - 1] - y[m:]) ** 2) for m in common])) if common else np.nan
        names, curves = names + (LAST,), curves + (Level(float(y[-1])),)
        moved = persistence * weights[names.index("level")]
        weights = np.append(weights, moved)
        weights[names.index("level")] -= moved
    avg = Average(names, curves, tuple(float(v) for v in weights), mse)
    return avg, forecasts
