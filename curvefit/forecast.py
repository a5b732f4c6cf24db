"""Forecasts from a fitted curve: the pass rate at a budget, or the compute needed for a target.

Intervals are prediction intervals for an evaluation at that budget: the bootstrap's spread, widened by the
run's own extrapolation error with the log-distance beyond the last fitted point (fit.py, extrapolation.py).
Beyond the data the forecast averages the sigmoid with the run's recent level by how well each forecast the run's
own future; when the sigmoid does not beat persistence there, the forecast is labelled a level forecast and says why.
"""

from __future__ import annotations

import numpy as np

from .average import LAST
from .extrapolation import Level
from .fit import CurveFit, sigmoid_beats_persistence

FAR = 10.0  # budgets more than FAR x beyond the last fitted point get a warning
TARGET_REACH = 1e6  # the target search runs to TARGET_REACH x the last fitted point
# A bootstrap interval narrower than this share of the metric's bound has no width (a perfectly flat or exact run):
# the widening over it is undefined, not the 2e11x that dividing by it gave.
NO_WIDTH = 1e-6


def basis(fit: CurveFit) -> str:
    return "sigmoid" if fit.level_forecast is None else "recent level"


def persistence(fit: CurveFit) -> dict:
    """Does the sigmoid beat persistence on this run's own backtest? The rolling origins (extrapolation.py) refit
    the sigmoid on prefixes of the run and score its forecasts of the rest against holding the recent level."""
    beats = sigmoid_beats_persistence(fit)
    out: dict = {"sigmoid_beats_persistence": beats, "weights": None, "mse": None}
    if fit.average is None:
        why = (
            f"--interval {fit.options.interval}; --interval selfcal runs it"
            if fit.options.interval != "selfcal"
            else "the point forecast is the bench's switch rule, FitOptions(point='switch')"
        )
        out["statement"] = f"no backtest of the sigmoid against persistence ({why})"
        return out
    mse = fit.average.inner_mse
    out["weights"] = dict(zip(fit.average.names, fit.average.weights))
    out["mse"] = {k: float(v) for k, v in mse.items()}
    if beats is None:
        out["statement"] = "too few points for the run's own backtest; the forecast is the sigmoid"
    else:
        verb = "beats" if beats else "does not beat"
        out["statement"] = (
            f"on this run's own backtest the sigmoid {verb} persistence (prefix forecasts' mean squared error "
            f"{mse['sigmoid']:.3g} against {mse['level']:.3g} for holding the recent level); the forecast beyond "
            f"the data is {fit.average.weight('sigmoid'):.0%} sigmoid, {fit.average.weight('level'):.0%} recent level"
            + (f", {fit.average.weight(LAST):.0%} last value" if fit.average.weight(LAST) > 0 else "")
        )
    return out


def honesty_note(fit: CurveFit) -> str | None:
    if fit.level_forecast is None:
        return None
    if fit.average is not None:
        mse = fit.average.inner_mse
        return (
            "level forecast: the sigmoid does not beat persistence on this run's own backtest (its prefix "
            f"forecasts' mean squared error {mse['sigmoid']:.3g} against {mse['level']:.3g} for holding the "
            f"level), so the forecast leans on the recent level {fit.level_forecast.value:.4g} "
            f"(weight {fit.average.weight('level'):.0%}"
            + (f", the last value {fit.average.weight(LAST):.0%}" if fit.average.weight(LAST) > 0 else "")
            + f", the sigmoid {fit.average.weight('sigmoid'):.0%})"
        )
    return (
        "the data do not identify the curve beyond the last fitted point (its own prefixes forecast better by "
        "holding the level, or the sigmoid never bends); the forecast is the recent level "
        f"{fit.level_forecast.value:.4g} and the interval spans the fitted sigmoid too"
    )


def times(ratio: float) -> str:
    """A ratio for a line or a table: 2,278.2x, or 2.3e+297x (a budget of 1e300 is a valid number, and its ratio
    written out filled the line with digits)."""
    return f"{ratio:,.1f}x" if abs(ratio) < 1e6 else f"{ratio:.2g}x"


def within_data(fit: CurveFit, budget: float) -> str:
    """Why a budget at or below the compute already observed has no forecast: its value is the fitted curve's, and
    below the first fitted point that curve only runs down towards R0 (a budget of 1 read as R0, unwarned)."""
    head = f"budget {budget:.4g} is not beyond the run's last fitted point ({fit.x_label} = {fit.x_last:.4g})"
    x_first = float(fit.x[fit.used].min())
    if budget >= x_first:
        return f"{head}: it lies within the data, so the value is the fitted curve's there, not a forecast"
    return (
        f"{head}: it lies below the first fitted point ({x_first:.4g}), where the fitted curve only runs down towards "
        f"R0 = {fit.params.R0:.4g}; the value is neither a measurement nor a forecast"
    )


def forecast_budget(fit: CurveFit, budget: float) -> dict:
    """Pass rate at `budget` with its interval, and the gain over the last point fitted.

    The gain is measured from the forecast's own value at the last fitted point: beyond the data that is the
    forecaster used there (the average of the sigmoid and the recent level) evaluated at x_last, not the fitted
    sigmoid's value, whose difference from the average is only the switch between models (a flat run showed a gain of
    -0.05). Within the data the forecast is the fitted curve, and so is its base."""
    x_last = fit.x_last
    value = float(fit.forecast(budget))
    r_last = float(fit.outer([x_last])[0]) if budget > x_last else float(fit.params(np.array([x_last]))[0])
    lo, hi = (float(v[0]) for v in fit.prediction_band([budget]))
    # The bootstrap's prediction interval alone, on the forecast: the curve band (no evaluation noise) made the
    # prediction interval look 2-4x "widened" at the last point, and excluded an averaged forecast beyond the data.
    b_lo, b_hi = (float(v[0]) for v in fit.bootstrap_prediction_band([budget]))
    c_lo, c_hi = (float(v[0]) for v in fit.band([budget]))
    ratio = budget / x_last
    no_width = b_hi - b_lo < NO_WIDTH * fit.options.bound
    widening = None if no_width else (hi - lo) / max(b_hi - b_lo, 1e-12)
    warnings = []
    if ratio > FAR:
        far = f"budget {budget:.4g} is {times(ratio)} beyond the last fitted point ({x_last:.4g})"
        if fit.extrap is not None and widening is None:
            warnings.append(
                f"{far}; the bootstrap interval has no width (the fitted points lie on the curve), so the interval "
                f"[{lo:.4g}, {hi:.4g}] is the allowance for the curve bending differently alone"
            )
        elif fit.extrap is not None:
            warnings.append(
                f"{far}; the interval is {widening:.1f}x wider than the bootstrap's alone to allow for the curve "
                "bending differently"
            )
        else:  # --interval bootstrap or variants: nothing measures how the curve may bend beyond the data
            warnings.append(f"{far}; this interval does not widen with the distance (--interval selfcal does)")
    within = budget <= x_last
    if within:
        warnings.append(within_data(fit, budget))
    note = honesty_note(fit)
    if note and not within:
        warnings.append(note)
    return {
        "budget": float(budget),
        "pass_rate": value,
        "basis": basis(fit),
        "ci": [lo, hi],
        "ci_curve": [c_lo, c_hi],
        "ci_bootstrap": [b_lo, b_hi],
        "widening": widening,
        "from": {"compute": x_last, "pass_rate": r_last},
        "gain": value - r_last,
        "gain_ci": [lo - r_last, hi - r_last],
        "extrapolation": ratio,
        "within_data": within,
        "persistence": persistence(fit),
        "warnings": warnings,
    }


def _first_reach(grid, values, target):
    hit = np.flatnonzero(values >= target)
    return float(grid[hit[0]]) if hit.size else None


def sigmoid_reach(fit: CurveFit, target: float) -> float | None:
    """Compute at which the fitted sigmoid alone reaches `target`, from its own formula; None when it never does
    (target at or above A) and the first positive compute when it starts at or above it."""
    p = fit.params
    if target >= p.A:
        return None
    if target <= p.R0:
        return float(fit.x[fit.x > 0].min())
    # R = R0 + (A - R0) / (1 + (C_mid / C)^B)  =>  C = C_mid / ((A - R0) / (R - R0) - 1)^(1 / B)
    with np.errstate(over="ignore", divide="ignore"):
        c = p.c_mid / ((p.A - p.R0) / (target - p.R0) - 1.0) ** (1.0 / p.B)
    return float(c) if np.isfinite(c) and c > 0 else None


def _mix(fit: CurveFit) -> str:
    """What the forecast beyond the data is made of, in a few words."""
    if fit.average is None:
        return f"the recent level {fit.level_forecast.value:.4g}" if fit.level_forecast is not None else "the sigmoid"
    avg = fit.average
    level = avg.curves[avg.names.index("level")] if "level" in avg.names else None
    held = f" {level.value:.4g}" if isinstance(level, Level) else ""
    parts = [f"{avg.weight('sigmoid'):.0%} sigmoid", f"{avg.weight('level'):.0%} recent level{held}"]
    if avg.weight(LAST) > 0:
        parts.append(f"{avg.weight(LAST):.0%} last value")
    return ", ".join(parts)


def _levels_off(fit: CurveFit, grid) -> float:
    """The value the forecast beyond the data levels off at: its limit (the sigmoid at A), or its highest value on
    the searched grid where the limit is not finite."""
    with np.errstate(all="ignore"):
        limit = float(fit.outer([np.inf])[0])
    return limit if np.isfinite(limit) else float(np.max(fit.forecast(grid)))


def forecast_target(fit: CurveFit, target: float) -> dict:
    """Compute needed to reach `target`, or a plain statement that the forecast does not reach it.

    The interval is read off the curve band: the lower end is where the band's upper edge reaches the target,
    the upper end where its lower edge does (null when that never happens: unbounded). `sigmoid_compute` is where the
    fitted sigmoid alone reaches the target (null: never): beyond the data the forecast averages it with the recent
    level, and levels off below A, so a target between that level and A is reached by the sigmoid but not the forecast.
    """
    pos = fit.x[fit.x > 0]
    grid = np.geomspace(float(pos.min()), fit.x_last * TARGET_REACH, 3000)
    lo_band, hi_band = fit.band(grid)
    point = _first_reach(grid, fit.forecast(grid), target)
    A = fit.boot[:, 0]
    p_reach = float(np.mean(A >= target))
    reachable = point is not None
    first = float(fit.forecast(grid[:1])[0])
    sig_c = sigmoid_reach(fit, target)
    if reachable and first >= target:
        statement = f"target {target:g} is already reached where the run starts ({first:.4g} at {grid[0]:.4g})"
    elif reachable:
        statement = f"reaching {target:g} takes about {point:.4g} ({fit.x_label})"
    elif target >= fit.params.A:
        a_lo, a_hi = fit.ci("A")
        statement = (
            f"target {target:g} lies above the fitted ceiling A = {fit.params.A:.4g} (interval {a_lo:.4g}-{a_hi:.4g})"
            "; more compute alone will not reach it"
        )
        if fit.level_forecast is not None:
            statement = (
                f"target {target:g} lies above the forecast, which holds the recent level "
                f"{fit.level_forecast.value:.4g} because the sigmoid does not beat persistence on this run; more "
                "compute is not shown to reach it"
            )
    else:
        # Below A, but the forecast beyond the data is not the sigmoid alone and levels off below the target.
        why = " (the sigmoid does not beat persistence on this run)" if fit.level_forecast is not None else ""
        sig = (
            f"the sigmoid alone (A = {fit.params.A:.4g}) would reach it at about {sig_c:.4g} ({fit.x_label})"
            if sig_c is not None
            else f"the sigmoid alone (A = {fit.params.A:.4g}) would approach it only beyond any finite compute"
        )
        statement = (
            f"target {target:g} is not reached by the forecast: beyond the data it is {_mix(fit)}{why} and levels "
            f"off at about {_levels_off(fit, grid):.4g}, below the target; {sig}"
        )
    return {
        "target": float(target),
        "reachable": reachable,
        "basis": basis(fit),
        "compute": point,
        "ci": [_first_reach(grid, hi_band, target), _first_reach(grid, lo_band, target)],
        "p_reachable": p_reach,
        "sigmoid_compute": sig_c,
        "statement": statement,
    }
