"""Forecasts from a fitted curve: the pass rate at a budget, or the compute needed for a target."""

from __future__ import annotations

import numpy as np

from .curves import sigmoid_inverse
from .fit import CurveFit


def _last_fitted(fit: CurveFit):
    x_last = float(fit.x[fit.used].max())
    return x_last, float(fit.params(x_last))


def forecast_budget(fit: CurveFit, budget: float) -> dict:
    """Pass rate at `budget` with its interval, and the gain over the last point fitted."""
    x_last, r_last = _last_fitted(fit)
    reps = fit.replica_curves([budget, x_last])
    value = float(fit.params(budget))
    return {
        "budget": float(budget),
        "pass_rate": value,
        "ci": fit.interval(reps[:, 0]),
        "from": {"compute": x_last, "pass_rate": r_last},
        "gain": value - r_last,
        "gain_ci": fit.interval(reps[:, 0] - reps[:, 1]),
        "extrapolation": budget / x_last,
    }


def forecast_target(fit: CurveFit, target: float) -> dict:
    """Compute needed to reach `target`, or a plain statement that it lies above the fitted ceiling.

    The interval comes from the bootstrap replicas; replicas whose ceiling is below the target need infinite
    compute, so when more than the upper tail of them do, the upper bound is reported as null (unbounded).
    """
    p = fit.params
    point = float(sigmoid_inverse(target, p.A, p.B, p.c_mid, p.R0))
    A, B, cm, R0 = fit.boot.T
    reps = np.array([sigmoid_inverse(target, *row) for row in zip(A, B, cm, R0)], float)
    p_reach = float(np.mean(np.isfinite(reps)))
    tail = 50.0 * (1.0 - fit.options.level)
    # "nearest" keeps an infinite quantile infinite instead of interpolating inf - inf into NaN.
    lo, hi = np.percentile(reps, [tail, 100.0 - tail], method="nearest")
    reachable = bool(np.isfinite(point))
    if reachable:
        statement = f"reaching {target:g} takes about {point:.4g} ({fit.x_label})"
    else:
        a_lo, a_hi = fit.ci("A")
        statement = (
            f"target {target:g} lies above the fitted ceiling A = {p.A:.4g} (interval {a_lo:.4g}-{a_hi:.4g}); "
            "more compute alone will not reach it"
        )
    return {
        "target": float(target),
        "reachable": reachable,
        "compute": point if reachable else None,
        "ci": [_finite_or_none(lo), _finite_or_none(hi)],
        "p_reachable": p_reach,
        "statement": statement,
    }


def _finite_or_none(v):
    return float(v) if np.isfinite(v) else None
