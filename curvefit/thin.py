"""Binning long curves: a W&B export of a long run can hold a million points, more than intervals need.

Consecutive points are averaged in bins of equal count (x by its mean in log space, y by its mean). Binning keeps
the curve's shape and its slow drifts, and averages away evaluation noise inside a bin; the bootstrap then
resamples the binned residuals, whose blocks still carry the autocorrelation along the run.
"""

from __future__ import annotations

import numpy as np

MAX_BOOT_POINTS = 2000


def bin_points(x, y, max_points: int):
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n <= max_points:
        return x, y
    edges = np.linspace(0, n, max_points + 1).astype(int)
    counts = np.diff(edges)
    idx = np.repeat(np.arange(max_points), counts)
    xb = np.exp(np.bincount(idx, weights=np.log(x)) / counts)
    yb = np.bincount(idx, weights=y) / counts
    return xb, yb
