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


# Markers a plot draws per run and per kind (used, excluded): every point of a 200k-point run made a 22 MB SVG,
# and a few thousand markers already show a curve's shape at a figure's resolution.
MAX_DRAWN_POINTS = 2000


def thin_for_drawing(x, y, max_points: int = MAX_DRAWN_POINTS):
    """The points to draw: at most `max_points` means of consecutive points along the compute axis (sorted first:
    pooled seeds interleave). Only what is drawn is thinned; the fit keeps every point."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) <= max_points:
        return x, y
    order = np.argsort(x, kind="stable")
    return bin_points(x[order], y[order], max_points)
