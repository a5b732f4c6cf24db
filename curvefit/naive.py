"""Naive forecasters and the proper score every forecast is judged by.

A curve forecast earns its keep only if it beats persistence. Two naive forecasters set that bar:
- the last observed value;
- the mean of the last three points (less noisy, so the fairer bar on a noisy evaluation).
Each gets a prediction interval from its own past one-step errors on the points it saw: the empirical
(alpha/2, 1 - alpha/2) quantiles of y_t - forecast_{t-1}, added to the point forecast.

The 90% interval score (Gneiting and Raftery 2007, Eq. 43) rewards narrow intervals and punishes misses by
2 / alpha (20 at 90%) times the distance beyond either end; lower is better and it is a proper scoring rule, so no
forecaster can improve its expected score by reporting anything but its honest interval.
"""

from __future__ import annotations

import numpy as np

NAIVE_WINDOW = 3  # the last-3 mean


def interval_score(y, lo, hi, level: float) -> np.ndarray:
    """Per-point interval score of the central `level` interval [lo, hi]."""
    alpha = 1.0 - level
    y, lo, hi = (np.asarray(v, float) for v in (y, lo, hi))
    return (hi - lo) + (2.0 / alpha) * (np.maximum(lo - y, 0.0) + np.maximum(y - hi, 0.0))


def _one_step_errors(y: np.ndarray, window: int) -> np.ndarray:
    if len(y) <= window:
        return np.diff(y) if len(y) > 1 else np.zeros(1)
    means = np.convolve(y, np.ones(window) / window, mode="valid")[:-1]  # mean of y[t-window:t]
    return y[window:] - means


def naive_forecast(y, n_test: int, window: int, level: float, bound: float = 1.0):
    """Point forecast (the mean of the last `window` points) and interval for n_test later points."""
    y = np.asarray(y, float)
    point = float(np.mean(y[-window:]))
    e = _one_step_errors(y, window)
    tail = 50.0 * (1.0 - level)
    q_lo, q_hi = np.percentile(e, [tail, 100.0 - tail])
    # The interval never claims a pass rate outside the metric's range.
    lo, hi = max(point + min(q_lo, 0.0), 0.0), min(point + max(q_hi, 0.0), bound)
    return np.full(n_test, point), np.full(n_test, lo), np.full(n_test, hi)


def last_value(y, n_test: int, level: float, bound: float = 1.0):
    return naive_forecast(y, n_test, 1, level, bound)


def last_mean(y, n_test: int, level: float, bound: float = 1.0):
    return naive_forecast(y, n_test, NAIVE_WINDOW, level, bound)
