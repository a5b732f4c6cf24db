"""Backtest: fit on the first fraction of compute, then score the forecast on the points that follow."""

from __future__ import annotations

import numpy as np

from .data import Curve
from .errors import InputError
from .fit import FitOptions, fit_curves, sigmoid_beats_persistence
from .naive import interval_score, last_mean, last_value

CALIBRATION_TOLERANCE = 0.10  # coverage this far from the nominal level is reported as miscalibrated


def forecast_points(fit, xt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point forecast and prediction interval for observations at compute xt."""
    lo, hi = fit.prediction_band(xt)
    return fit.forecast(xt), lo, hi


def cut_heads(curves: list[Curve], fraction: float) -> tuple[float, list[Curve]]:
    """The cut at the first `fraction` of the curves' compute range, and each curve's points up to it."""
    x_all = np.concatenate([c.x for c in curves])
    cut = float(x_all.min() + fraction * (x_all.max() - x_all.min()))
    heads = [
        Curve(
            c.name,
            c.x[c.x <= cut],
            c.y[c.x <= cut],
            c.x_label,
            c.y_label,
            list(c.warnings),
            samples=None if c.samples is None else c.samples[c.x <= cut],
            starts_before_training=c.starts_before_training,
        )
        for c in curves
    ]
    return cut, heads


def backtest(curves: list[Curve], opts: FitOptions, fraction: float, name: str | None = None) -> dict:
    if not 0.0 < fraction < 1.0:
        raise InputError(f"--backtest takes a fraction between 0 and 1, not {fraction:g}")
    cut, heads = cut_heads(curves, fraction)
    try:
        fit = fit_curves(heads, opts, name=name)
    except InputError as e:
        raise InputError(f"--backtest {fraction:g} (fit up to {cut:g}): {e}") from None
    xt = np.concatenate([c.x[c.x > cut] for c in curves])
    yt = np.concatenate([c.y[c.x > cut] for c in curves])
    if len(xt) == 0:
        raise InputError(f"{fit.name}: no points after the backtest cut at {cut:g}")
    pred, lo, hi = forecast_points(fit, xt)
    err = np.abs(pred - yt)
    band_lo, band_hi = fit.band(xt)
    coverage = float(np.mean((yt >= lo) & (yt <= hi)))
    calibration = None
    if abs(coverage - opts.level) > CALIBRATION_TOLERANCE:
        calibration = (
            f"backtest coverage {coverage:.0%} is off the nominal {100 * opts.level:.3g}% by more than "
            f"{CALIBRATION_TOLERANCE:.0%} ({len(xt)} later points); "
            + ("the intervals are too narrow for this run" if coverage < opts.level else "the intervals are wide")
        )
    score = float(np.mean(interval_score(yt, lo, hi, opts.level)))
    naive = _naive_scores(heads[0].y, yt, opts) if len(heads) == 1 else None
    return {
        "fraction": fraction,
        "interval_score": score,
        "mean_width": float(np.mean(hi - lo)),
        "naive": naive,
        "beats_naive": None if naive is None else bool(err.mean() < min(v["mae"] for v in naive.values())),
        "cut": cut,
        "n_train": fit.n_points,
        "n_test": int(len(xt)),
        "mae": float(err.mean()),
        "max_abs_error": float(err.max()),
        "level": opts.level,
        "coverage": coverage,
        "calibration_warning": calibration,
        "mae_last_value": float(np.mean(np.abs(yt - heads[0].y[-1]))) if len(heads) == 1 else None,
        "basis": "sigmoid" if fit.level_forecast is None else "recent level",
        "sigmoid_beats_persistence": sigmoid_beats_persistence(fit),
        "coverage_mean_band": float(np.mean((yt >= band_lo) & (yt <= band_hi))),
        "final": {
            "compute": float(xt.max()),
            "observed": float(yt[np.argmax(xt)]),
            "predicted": float(fit.forecast(xt.max())),
        },
        "fit": fit,
    }


def _naive_scores(y_head, yt, opts: FitOptions) -> dict:
    """The two naive forecasters on the same later points: error, interval score and coverage."""
    out = {}
    for name, fn in (("last value", last_value), ("last-3 mean", last_mean)):
        pred, lo, hi = fn(y_head, len(yt), opts.level, opts.bound)
        out[name] = {
            "mae": float(np.mean(np.abs(pred - yt))),
            "interval_score": float(np.mean(interval_score(yt, lo, hi, opts.level))),
            "coverage": float(np.mean((yt >= lo) & (yt <= hi))),
        }
    return out
