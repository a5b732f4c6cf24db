"""Forecast backtests on every development curve, scored by a proper rule, leave-one-source-out.

Run: nice -n 10 python bench/bench_forecast.py [--data DIR] [--n-boot 300] [--skip METHOD ...] [--no-speed]

Every run of every CSV under DIR (default ../shared/data/curves, see its README) is cut at 0.3, 0.5 and 0.7 of
its compute range (x_first + F (x_last - x_first), as `scalerl fit --backtest F`); each method is fitted on the
points up to the cut and scored on at most TEST_POINTS later points, evenly spaced in index, so that a
1,000-point run and a 40-point run weigh about the same. Exact duplicate runs (the same x and y) are counted once.
A source is the first word of the file name (the three Deep-GRPO files are one source).

Sample counts (for the noise weighting): Deep-GRPO reports mean@1 on GSM8K's 1,319 test problems and the spurious
rewards runs greedy MATH-500 (every value in those files is a multiple of 1/1319 and 1/500); cs336 has its count
in `n_eval`; tanzelin's points are means over repeated runs, count unknown (noise estimated from residuals).

Scores (nominal 90% intervals), every one computed leave-one-source-out: the one corpus-level constant of the
scalerl methods, the floor K_FLOOR on the extrapolation error growth (extrapolation.py), is chosen for each source
from FLOORS by the mean interval score on the *other* sources, then the source is scored with it.
- coverage: share of scored points inside the interval, pooled; worst: the worst source's coverage;
- IS: mean 90% interval score (Gneiting and Raftery 2007: width + 20 x the miss beyond either end), and IS/naive:
  the ratio of that to the better naive forecaster's mean interval score;
- width: mean interval width; MAE: mean absolute error over all scored points;
- beats naive: share of backtests whose MAE is below both naive forecasters' (the last value and the last-3 mean);
  ratio: the median over backtests of MAE / the better naive MAE.
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from scalerl.curvefit.backtest import forecast_points  # noqa: E402
from scalerl.curvefit.corpus import learn_priors  # noqa: E402
from scalerl.curvefit.data import Curve  # noqa: E402
from scalerl.curvefit.errors import InputError  # noqa: E402
from scalerl.curvefit.fit import FitOptions, fit_curves  # noqa: E402
from scalerl.curvefit.naive import interval_score, last_mean, last_value  # noqa: E402
from scalerl.curvefit.readers import ReadOptions, read_sources  # noqa: E402

CUTS = (0.3, 0.5, 0.7)
TEST_POINTS = 12
MIN_HEAD = 10  # backtests with fewer points before the cut are skipped for every method
LEVEL = 0.90
FLOORS = (0.0, 0.005, 0.01, 0.02, 0.03)  # K_FLOOR candidates, chosen leave-one-source-out
DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "curves"
SAMPLES = {
    "deepgrpo": ReadOptions(samples=1319),
    "spurious": ReadOptions(samples=500),
    "cs336": ReadOptions(samples_col="n_eval"),
}


def source_of(stem: str) -> str:
    return stem.split("_", 1)[0]


def load_corpus(data: Path) -> list[Curve]:
    curves, seen = [], set()
    for path in sorted(data.glob("*.csv")):
        for c in read_sources([path], SAMPLES.get(source_of(path.stem), ReadOptions())):
            key = (c.x.tobytes(), c.y.tobytes())
            if key not in seen:
                seen.add(key)
                c.name = f"{path.stem[:12]}:{c.name}"
                c.group = source_of(path.stem)
                curves.append(c)
    return curves


def head_and_tail(c: Curve, frac: float):
    cut = c.x[0] + frac * (c.x[-1] - c.x[0])
    keep = c.x <= cut
    samples = None if c.samples is None else c.samples[keep]
    head = Curve(c.name, c.x[keep], c.y[keep], c.x_label, c.y_label, samples=samples)
    later = np.flatnonzero(~keep)
    pick = later[np.unique(np.round(np.linspace(0, len(later) - 1, min(TEST_POINTS, len(later)))).astype(int))]
    return head, c.x[pick], c.y[pick]


# --- methods: (head curve, test x, n_boot) -> (point forecast, {floor: (lower, upper)}); one key None when the
# method has no constant to choose


def naive(fn):
    def run(head, xt, n_boot, prior):
        pred, lo, hi = fn(head.y, len(xt), LEVEL)
        return pred, {None: (lo, hi)}

    return run


def plain_curve_fit(head, xt, n_boot, prior):
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
            nan = np.full(len(xt), np.nan)
            return np.full(len(xt), y[-1]), {None: (nan, nan)}
        pred = f(xt, *p)
        eps = 1e-6
        jac = np.stack([(f(xt, *(p + eps * np.eye(4)[k])) - pred) / eps for k in range(4)], axis=1)
        s2 = float(np.sum((f(x, *p) - y) ** 2) / max(len(x) - 4, 1))
        var = np.einsum("ij,jk,ik->i", jac, np.nan_to_num(cov, nan=1e6, posinf=1e6), jac) + s2
    half = student_t.ppf(0.5 + LEVEL / 2, max(len(x) - 4, 1)) * np.sqrt(np.maximum(var, 0))
    # Clipped to the metric's range, as anyone would: an unclipped delta-method band can be meters wide.
    return pred, {None: (np.maximum(pred - half, 0.0), np.minimum(pred + half, 1.0))}


def _scalerl(learned_prior=False, **opts):
    def run(head, xt, n_boot, prior):
        if learned_prior:
            opts["prior"] = prior
        fit = fit_curves([head], FitOptions(n_boot=n_boot, level=LEVEL, **opts))
        pred = fit.forecast(xt)
        if fit.extrap is None:
            return pred, {None: fit.prediction_band(xt)}
        base = fit.extrap
        bands = {}
        for floor in FLOORS:
            k = max(floor, base.k_measured) if np.isfinite(base.k_measured) else 5 * max(floor, 0.01)
            fit.extrap = dataclasses.replace(base, k=k)
            bands[floor] = fit.prediction_band(xt)
        return pred, bands

    return run


METHODS = {
    "last value": naive(last_value),
    "last-3 mean": naive(last_mean),
    "plain curve_fit": plain_curve_fit,
    "old default": _scalerl(point="switch", weighting=False, prior=None),  # issue 14's: hard switch, unweighted
    # Ablations of the new default, one ingredient at a time.
    "+ averaging": _scalerl(weighting=False, prior=None),
    "+ noise weights": _scalerl(prior=None),
    "new default": _scalerl(learned_prior=True),  # + the shape prior, learned without the scored source
}
NAIVE = ("last value", "last-3 mean")


def evaluate(curves, methods, n_boot):
    """Per method, one record per backtest: (source, curve, cut, y, prediction, {floor: (lo, hi)}).

    The shape prior of a curve is learned from the whole runs of the other sources only."""
    rows = {m: [] for m in methods}
    priors = {s: learn_priors([c for c in curves if c.group != s]) for s in sorted({c.group for c in curves})}
    for c in curves:
        for frac in CUTS:
            head, xt, yt = head_and_tail(c, frac)
            if len(xt) == 0 or np.sum(head.x > 0) < MIN_HEAD:
                continue
            for m in methods:
                try:
                    pred, bands = METHODS[m](head, xt, n_boot, priors[c.group])
                except InputError:  # a method that cannot forecast falls back to the last value, no interval
                    nan = np.full(len(xt), np.nan)
                    pred, bands = np.full(len(xt), head.y[-1]), {None: (nan, nan)}
                rows[m].append((c.group, c.name, frac, yt, pred, bands))
    return rows


def _band(bands, floor):
    return bands[None] if None in bands else bands[floor]


def _bounded(band):
    """A method that failed to give an interval is scored as claiming the metric's whole range."""
    lo, hi = band
    return np.where(np.isfinite(lo), lo, 0.0), np.where(np.isfinite(hi), hi, 1.0)


def _mean_is(records, floor):
    scores = [interval_score(y, *_bounded(_band(b, floor)), LEVEL) for _, _, _, y, _, b in records]
    return float(np.mean(np.concatenate(scores)))


def loso_bands(records):
    """Each backtest's interval under the floor chosen on the other sources (the best mean interval score)."""
    sources = sorted({r[0] for r in records})
    chosen = {}
    for s in sources:
        others = [r for r in records if r[0] != s]
        candidates = sorted({f for r in records for f in r[5]}, key=lambda f: -1 if f is None else f)
        chosen[s] = min(candidates, key=lambda f: _mean_is(others, f))
    return [_band(r[5], chosen[r[0]]) for r in records], chosen


def summarise(rows):
    naive_mae = {m: [np.mean(np.abs(r[4] - r[3])) for r in rows[m]] for m in NAIVE if m in rows}
    better = np.minimum(*naive_mae.values())
    naive_is = min(_mean_is(rows[m], None) for m in naive_mae)
    out = {}
    for m, recs in rows.items():
        bands, chosen = loso_bands(recs)
        y = np.concatenate([r[3] for r in recs])
        err = np.abs(np.concatenate([r[4] for r in recs]) - y)
        lo = np.concatenate([_bounded(b)[0] for b in bands])
        hi = np.concatenate([_bounded(b)[1] for b in bands])
        inside = (y >= lo) & (y <= hi)
        src = np.concatenate([[r[0]] * len(r[3]) for r in recs])
        by_source = {s: float(inside[src == s].mean()) for s in np.unique(src)}
        worst = min(by_source, key=by_source.get)
        score = interval_score(y, lo, hi, LEVEL)
        mae = np.array([np.mean(np.abs(r[4] - r[3])) for r in recs])
        floors = sorted({f for f in chosen.values() if f is not None})
        candidates = sorted({f for r in recs for f in r[5]}, key=lambda f: -1 if f is None else f)
        pooled = min(candidates, key=lambda f: _mean_is(recs, f))
        out[m] = {
            "coverage": float(inside.mean()),
            "worst": (by_source[worst], worst),
            "by_source": by_source,
            "is": float(np.mean(score)),
            "is_ratio": float(np.mean(score)) / naive_is,
            "width": float(np.mean(hi - lo)),
            "mae": float(err.mean()),
            "beats": float(np.mean(mae < better)),
            "ratio": float(np.median(mae / np.maximum(better, 1e-12))),
            "floors": floors,
            "floor_all": pooled,
            "mae_by_source": {s: float(err[src == s].mean()) for s in np.unique(src)},
        }
    return out


def speed(n_boot=1000):
    """Fit + intervals + a forecast for a 1,000-point curve, one core: the old default against the new one."""
    rng = np.random.default_rng(0)
    x = np.linspace(1.0, 5000.0, 1000)
    y = 0.43 + 0.22 / (1.0 + (300.0 / x) ** 1.2) + rng.normal(0, 0.01, 1000)
    c = Curve("speed", x, y, "step", "pass_rate", samples=np.full(1000, 2000.0))
    t = {}
    for name, opts in (("old default", dict(point="switch", weighting=False, prior=None)), ("new default", {})):
        best = np.inf
        for _ in range(5):
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
    ap.add_argument("--skip", nargs="*", default=[], help="methods to leave out")
    ap.add_argument("--only", nargs="*", help="only these curve-name prefixes")
    ap.add_argument("--no-speed", action="store_true")
    args = ap.parse_args()
    curves = load_corpus(args.data)
    if args.only:
        curves = [c for c in curves if c.name.startswith(tuple(args.only))]
    methods = [m for m in METHODS if m not in args.skip or m in NAIVE]
    t0 = time.perf_counter()
    summary = summarise(evaluate(curves, methods, args.n_boot))
    sources = sorted({c.group for c in curves})
    counts = {s: sum(c.group == s for c in curves) for s in sources}
    print(
        f"{len(curves)} curves ({', '.join(f'{s} {n}' for s, n in counts.items())}) x cuts {CUTS}, up to "
        f"{TEST_POINTS} later points each; nominal {LEVEL:.0%} intervals; leave-one-source-out; n_boot "
        f"{args.n_boot}; {time.perf_counter() - t0:.0f} s"
    )
    head = f"{'method':20s} {'coverage':>8s} {'worst source':>18s} {'IS':>7s} {'IS/naive':>8s} {'width':>6s} "
    print(head + f"{'MAE':>7s} {'beats naive':>11s} {'ratio':>6s}  K_FLOOR chosen (on all sources)")
    for m, s in summary.items():
        wv, wn = s["worst"]
        print(
            f"{m:20s} {s['coverage']:8.2f} {f'{wv:.2f} {wn}':>18s} {s['is']:7.4f} {s['is_ratio']:8.2f} "
            f"{s['width']:6.3f} {s['mae']:7.4f} {s['beats']:11.2f} {s['ratio']:6.2f}  "
            f"{', '.join(f'{f:g}' for f in s['floors']) or '-'}"
            + ("" if s["floor_all"] is None else f" ({s['floor_all']:g})")
        )
    print("by source (coverage / MAE):")
    for m, s in summary.items():
        cells = "  ".join(f"{k} {s['by_source'][k]:.2f}/{s['mae_by_source'][k]:.4f}" for k in sources)
        print(f"  {m:20s} {cells}")
    if not args.no_speed:
        t = speed()
        old, new = t["old default"], t["new default"]
        print(
            f"speed, 1,000-point curve, fit + 1,000-replica intervals + forecast, one core: old default "
            f"{old:.3f} s, new default {new:.3f} s (ratio {new / old:.2f})"
        )


if __name__ == "__main__":
    main()
