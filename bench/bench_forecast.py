"""Forecast backtests on every development curve: calibration and error of each method, side by side.

Run: python bench/bench_forecast.py [--data DIR] [--n-boot 300] [--skip paper]

Every run of every CSV under DIR (default ../shared/data/curves, see its README) is cut at 0.3, 0.5 and 0.7 of
its compute range (x_first + F (x_last - x_first), as `scalerl fit --backtest F`); each method is fitted on the
points up to the cut and scored on at most TEST_POINTS later points, evenly spaced in index, so that a
1,000-point run and a 40-point run weigh about the same. Exact duplicate runs (the same x and y) are counted once.

Columns: pooled coverage of the nominal 90% prediction interval (all scored points), the worst curve's coverage
(its three cuts pooled), mean and median absolute error over all scored points, and the share of backtests whose
mean absolute error beats repeating the last observed value.
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from scalerl.curvefit.backtest import forecast_points  # noqa: E402
from scalerl.curvefit.data import Curve  # noqa: E402
from scalerl.curvefit.errors import InputError  # noqa: E402
from scalerl.curvefit.fit import FitOptions, fit_curves  # noqa: E402
from scalerl.curvefit.readers import ReadOptions, read_sources  # noqa: E402

CUTS = (0.3, 0.5, 0.7)
TEST_POINTS = 12
MIN_HEAD = 10  # backtests with fewer points before the cut are skipped for every method
NO_INTERVAL = ("last-value",)
LEVEL = 0.90
DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "curves"


def load_corpus(data: Path) -> list[Curve]:
    curves, seen = [], set()
    for path in sorted(data.glob("*.csv")):
        for c in read_sources([path], ReadOptions()):
            key = (c.x.tobytes(), c.y.tobytes())
            if key not in seen:
                seen.add(key)
                c.name = f"{path.stem[:12]}:{c.name}"
                curves.append(c)
    return curves


def head_and_tail(c: Curve, frac: float):
    cut = c.x[0] + frac * (c.x[-1] - c.x[0])
    head = Curve(c.name, c.x[c.x <= cut], c.y[c.x <= cut], c.x_label, c.y_label)
    later = np.flatnonzero(c.x > cut)
    pick = later[np.unique(np.round(np.linspace(0, len(later) - 1, min(TEST_POINTS, len(later)))).astype(int))]
    return head, c.x[pick], c.y[pick]


# --- methods: (head curve, test x) -> (point forecast, lower, upper); bounds None when a method has no interval


def last_value(head, xt, n_boot):
    return np.full(len(xt), head.y[-1]), None, None


def plain_curve_fit(head, xt, n_boot):
    """What one would write by hand: scipy's curve_fit of the four-parameter sigmoid on every point, delta-method
    prediction interval from its covariance."""
    from scipy.optimize import curve_fit
    from scipy.stats import t as student_t

    keep = head.x > 0
    x, y = head.x[keep], head.y[keep]

    def f(c, A, B, log_cmid, R0):
        return R0 + (A - R0) / (1.0 + np.exp(np.clip(B * (log_cmid - np.log(c)), -700, 700)))

    p0 = [float(y.max()), 1.0, float(np.log(np.median(x))), float(y[0])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            p, cov = curve_fit(f, x, y, p0=p0, maxfev=20000)
        except (RuntimeError, ValueError):
            return np.full(len(xt), y[-1]), np.full(len(xt), np.nan), np.full(len(xt), np.nan)
        pred = f(xt, *p)
        eps = 1e-6
        jac = np.stack([(f(xt, *(p + eps * np.eye(4)[k])) - pred) / eps for k in range(4)], axis=1)
        s2 = float(np.sum((f(x, *p) - y) ** 2) / max(len(x) - 4, 1))
        var = np.einsum("ij,jk,ik->i", jac, np.nan_to_num(cov, nan=1e6, posinf=1e6), jac) + s2
    half = student_t.ppf(0.5 + LEVEL / 2, max(len(x) - 4, 1)) * np.sqrt(np.maximum(var, 0))
    return pred, pred - half, pred + half


def _scalerl(**opts):
    def run(head, xt, n_boot):
        fit = fit_curves([head], FitOptions(n_boot=n_boot, level=LEVEL, **opts))
        return forecast_points(fit, xt)

    return run


def todays_default(head, xt, n_boot):
    # Before issue 14: the first 10% of the linear compute range left out, residual block bootstrap only.
    thr = float(head.x[0] + 0.1 * (head.x[-1] - head.x[0]))
    return _scalerl(interval="bootstrap", exclude_before=thr)(head, xt, n_boot)


METHODS = {
    "last-value": last_value,
    "plain curve_fit": plain_curve_fit,
    "paper method": _scalerl(method="paper", interval="bootstrap"),
    "today's default": todays_default,
    "variant hull": _scalerl(interval="variants"),
    "new default": _scalerl(),
}


def evaluate(curves, methods, n_boot):
    rows = {m: [] for m in methods}  # per backtest: (curve, |err| array, inside array or None)
    for c in curves:
        for frac in CUTS:
            head, xt, yt = head_and_tail(c, frac)
            if len(xt) == 0 or np.sum(head.x > 0) < MIN_HEAD:
                continue
            for m in methods:
                try:
                    pred, lo, hi = METHODS[m](head, xt, n_boot)
                except InputError:  # a method that cannot forecast falls back to last-value, with no interval
                    pred, lo, hi = np.full(len(xt), head.y[-1]), None, None
                if lo is None:
                    inside = None if m in NO_INTERVAL else np.zeros(len(xt), bool)
                else:
                    inside = (yt >= lo) & (yt <= hi)
                rows[m].append((c.name, frac, np.abs(pred - yt), inside))
    return rows


def summarise(rows):
    last = {(n, f): e.mean() for n, f, e, _ in rows["last-value"]}
    out = {}
    for m, bts in rows.items():
        err = np.concatenate([e for _, _, e, _ in bts])
        beats = np.mean([e.mean() < last[(n, f)] for n, f, e, _ in bts]) if m != "last-value" else float("nan")
        if bts[0][3] is None:
            out[m] = (float("nan"), float("nan"), "", err.mean(), np.median(err), beats)
            continue
        inside = np.concatenate([i for *_, i in bts])
        per_curve = {}
        for n, _, _, i in bts:
            per_curve.setdefault(n, []).append(i)
        cov = {n: np.concatenate(v).mean() for n, v in per_curve.items()}
        worst = min(cov, key=cov.get)
        out[m] = (inside.mean(), cov[worst], worst, err.mean(), np.median(err), beats)
    return out


def speed(n_boot=1000):
    """Fit + intervals for a 1,000-point curve, one core: today's default against the new one."""
    rng = np.random.default_rng(0)
    x = np.linspace(1.0, 5000.0, 1000)
    y = 0.43 + 0.22 / (1.0 + (300.0 / x) ** 1.2) + rng.normal(0, 0.01, 1000)
    c = Curve("speed", x, y, "step", "pass_rate")
    t = {}
    for name, opts in (("today's default", dict(interval="bootstrap", exclude_before=500.0)), ("new default", {})):
        best = np.inf
        for _ in range(3):
            t0 = time.perf_counter()
            fit = fit_curves([c], FitOptions(n_boot=n_boot, **opts))
            forecast_points(fit, np.array([1e4, 5e4]))
            best = min(best, time.perf_counter() - t0)
        t[name] = best
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n-boot", type=int, default=300)
    ap.add_argument("--skip", nargs="*", default=[], help="methods to leave out (e.g. 'paper method', it is slow)")
    ap.add_argument("--only", nargs="*", help="only these curve-name prefixes")
    args = ap.parse_args()
    curves = load_corpus(args.data)
    if args.only:
        curves = [c for c in curves if c.name.startswith(tuple(args.only))]
    methods = [m for m in METHODS if m not in args.skip]
    if "last-value" not in methods:
        methods.insert(0, "last-value")
    t0 = time.perf_counter()
    summary = summarise(evaluate(curves, methods, args.n_boot))
    print(
        f"{len(curves)} curves x cuts {CUTS}, up to {TEST_POINTS} later points each; nominal {LEVEL:.0%} intervals; "
        f"n_boot {args.n_boot}; {time.perf_counter() - t0:.0f} s"
    )
    print(f"{'method':18s} {'coverage':>8s} {'worst':>6s} {'MAE':>7s} {'median':>7s} {'beats last':>10s}  worst curve")
    for m, (cov, worst, wname, mae, med, beats) in summary.items():
        cov_s = f"{cov:8.2f}" if np.isfinite(cov) else f"{'-':>8s}"
        worst_s = f"{worst:6.2f}" if np.isfinite(worst) else f"{'-':>6s}"
        beats_s = f"{beats:10.2f}" if np.isfinite(beats) else f"{'-':>10s}"
        print(f"{m:18s} {cov_s} {worst_s} {mae:7.4f} {med:7.4f} {beats_s}  {wname}")
    t = speed()
    old, new = t["today's default"], t["new default"]
    print(
        f"speed, 1,000-point curve, fit + 1,000-replica intervals + forecast, one core: today's default "
        f"{old:.2f} s, new default {new:.2f} s (ratio {new / old:.2f})"
    )


if __name__ == "__main__":
    main()
