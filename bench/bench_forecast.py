"""Forecast backtests on every development curve, scored by a proper rule, leave-one-source-out.

Run: nice -n 10 python bench/bench_forecast.py [--data DIR ...] [--n-boot 300] [--skip METHOD ...] [--no-speed]
     [--no-oracles] [--protocol cuts|half] [--thin N]

Every run of every CSV under the DIRs (default: ../shared/data/curves, see its README, and the public curves of
bench/curves, see its README; training-reward files, *_train_*, are left out: scalerl forecasts held-out
evaluations) is cut at 0.3, 0.5 and 0.7 of
its compute range (x_first + F (x_last - x_first), as `scalerl fit --backtest F`); each method is fitted on the
points up to the cut and scored on at most TEST_POINTS later points, evenly spaced in index, so that a
1,000-point run and a 40-point run weigh about the same. Exact duplicate runs (the same x and y) are counted once.
A source is the first word of the file name (the three Deep-GRPO files are one source).
`--protocol half` scores instead as issue 24 describes its held-back curves: each run cut at half its points, every
later point scored (docs/curvefit.md reports both).

Sample counts (for the noise weighting): Deep-GRPO reports mean@1 on GSM8K's 1,319 test problems and the spurious
rewards runs greedy MATH-500 (every value in those files is a multiple of 1/1319 and 1/500); cs336 and octothinker
have their count in `n_eval`; tanzelin's points are means over repeated runs, and the nsr and drgrpo points were
read from figures: count unknown (noise estimated from residuals).

Scores (nominal 90% intervals), every one computed leave-one-source-out: the corpus-level constants of the
scalerl methods (the floor K_FLOOR on the extrapolation error growth, extrapolation.py, and where a method sweeps
one, the last point's share of average.py or the warm-up share of exclusion.py) are chosen for each source from
their candidates by the mean interval score on the *other* sources, then the source is scored with them (point
forecast and interval together). The shape prior is learned on the other sources' whole runs; in the "peers'
prior" row (`--prior peers`) on the other runs of the same file cut at the same share, that prior where there are
fewer than two.
- coverage: share of scored points inside the interval, pooled; worst: the worst source's coverage;
- IS: mean 90% interval score (Gneiting and Raftery 2007: width + 20 x the miss beyond either end), and IS/naive:
  the ratio of that to the better naive forecaster's mean interval score;
- width: mean interval width; MAE: mean absolute error over all scored points;
- beats naive: share of backtests whose MAE is below both naive forecasters' (the last value and the last-3 mean);
  ratio: the median over backtests of MAE / the better naive MAE; both also split into backtests whose run still
  rises (or falls) after the cut and flat ones, and by cut;
- reference rows that see the future (the scored points' median, the whole-run fit) and the interval score's
  noise floor: how far any forecast could go, not forecasts.
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from statistics import NormalDist  # noqa: E402

import numpy as np  # noqa: E402

from scalerl.curvefit import extrapolation  # noqa: E402
from scalerl.curvefit.backtest import forecast_points  # noqa: E402
from scalerl.curvefit.corpus import learn_priors, peer_priors  # noqa: E402
from scalerl.curvefit.data import Curve  # noqa: E402
from scalerl.curvefit.errors import InputError  # noqa: E402
from scalerl.curvefit.fit import FitOptions, fit_curves  # noqa: E402
from scalerl.curvefit.naive import interval_score, last_mean, last_value  # noqa: E402
from scalerl.curvefit.readers import ReadOptions, read_sources  # noqa: E402

CUTS = (0.3, 0.5, 0.7)
TEST_POINTS = 12
# --protocol half: issue 24's held-back scoring as the issue describes it (each curve cut at half its points, every
# later point scored), so that the development corpus can be read on the same footing as the held-back figures.
HALF = "half"
MIN_HEAD = 10  # backtests with fewer points before the cut are skipped for every method
LEVEL = 0.90
FLOORS = (0.0, 0.005, 0.01, 0.02, 0.03)  # K_FLOOR candidates, chosen leave-one-source-out
# The curves handed to the project (../shared/data/curves) and the public ones collected into the repository
# (bench/curves; sources and licences in its README).
DEFAULT_DATA = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "curves",
    Path(__file__).resolve().parent / "curves",
)
SAMPLES = {
    "deepgrpo": ReadOptions(samples=1319),
    "spurious": ReadOptions(samples=500),
    "cs336": ReadOptions(samples_col="n_eval"),
    "octothinker": ReadOptions(samples_col="n_eval"),
    "maye": ReadOptions(samples_col="n_eval"),
}
# Training-reward curves (bench/curves/*_train_*.csv) are not what scalerl forecasts: held-out evaluations only.
SKIP_FILES = "_train_"


def source_of(stem: str) -> str:
    return stem.split("_", 1)[0]


def load_corpus(dirs) -> list[Curve]:
    curves, seen = [], set()
    paths = sorted((p for d in dirs for p in d.glob("*.csv")), key=lambda p: p.name)
    for path in (p for p in paths if SKIP_FILES not in p.stem):
        for c in read_sources([path], SAMPLES.get(source_of(path.stem), ReadOptions())):
            key = (c.x.tobytes(), c.y.tobytes())
            if key not in seen:
                seen.add(key)
                c.name = f"{path.stem}:{c.name}"  # the file names the sweep (forecast_limits.py)
                c.group = source_of(path.stem)
                curves.append(c)
    return curves


def head_and_tail(c: Curve, frac: float | str):
    if frac == HALF:
        keep = np.arange(len(c.x)) < len(c.x) // 2
    else:
        keep = c.x <= c.x[0] + frac * (c.x[-1] - c.x[0])
    samples = None if c.samples is None else c.samples[keep]
    head = Curve(c.name, c.x[keep], c.y[keep], c.x_label, c.y_label, samples=samples)
    later = np.flatnonzero(~keep)
    if frac == HALF:
        return head, c.x[later], c.y[later]
    pick = later[np.unique(np.round(np.linspace(0, len(later) - 1, min(TEST_POINTS, len(later)))).astype(int))]
    return head, c.x[pick], c.y[pick]


def thinned(c: Curve, n: int) -> Curve:
    keep = np.unique(np.round(np.linspace(0, len(c.x) - 1, n)).astype(int))
    samples = None if c.samples is None else c.samples[keep]
    out = Curve(c.name, c.x[keep], c.y[keep], c.x_label, c.y_label, samples=samples)
    out.group = c.group
    return out


# --- methods: (head curve, test x, n_boot, prior) -> {key: (point forecast, (lower, upper))}; the key is a
# corpus-level constant the method can be run with (None when it has none), chosen leave-one-source-out


def naive(fn):
    def run(head, xt, n_boot, prior):
        pred, lo, hi = fn(head.y, len(xt), LEVEL)
        return {None: (pred, (lo, hi))}

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
            return {None: (np.full(len(xt), y[-1]), (nan, nan))}
        pred = f(xt, *p)
        eps = 1e-6
        jac = np.stack([(f(xt, *(p + eps * np.eye(4)[k])) - pred) / eps for k in range(4)], axis=1)
        s2 = float(np.sum((f(x, *p) - y) ** 2) / max(len(x) - 4, 1))
        var = np.einsum("ij,jk,ik->i", jac, np.nan_to_num(cov, nan=1e6, posinf=1e6), jac) + s2
    half = student_t.ppf(0.5 + LEVEL / 2, max(len(x) - 4, 1)) * np.sqrt(np.maximum(var, 0))
    # Clipped to the metric's range, as anyone would: an unclipped delta-method band can be meters wide.
    return {None: (pred, (np.maximum(pred - half, 0.0), np.minimum(pred + half, 1.0)))}


def _scalerl(learned_prior=False, sweep=None, peers=False, **opts):
    """sweep: (FitOptions field, candidate values) of a corpus-level constant, each value a separate fit, chosen
    leave-one-source-out with the floor (key (value, floor)); None: the method's own options, key the floor alone.
    peers: the shape prior from the other runs of the file, cut at the same share (as `--prior peers`), else the
    corpus prior learned without the scored source (evaluate passes the one the method asks for)."""

    def run(head, xt, n_boot, prior):
        if learned_prior:
            opts["prior"] = prior
        out = {}
        field, values = sweep or (None, (None,))
        for value in values:
            extra = {} if field is None else {field: value}
            fit = fit_curves([head], FitOptions(n_boot=n_boot, level=LEVEL, **opts, **extra))
            pred = fit.forecast(xt)
            if fit.extrap is None:
                out[value] = (pred, fit.prediction_band(xt))
                continue
            base = fit.extrap
            for floor in FLOORS:
                # The library's rule with this floor: measured k between it and K_CAP; 5 x the floor with no measure.
                k = extrapolation.bounded_k(base.k_measured, base.n_origins, floor)
                fit.extrap = dataclasses.replace(base, k=k)
                out[floor if field is None else (value, floor)] = (pred, fit.prediction_band(xt))
        return out

    run.peers = peers  # type: ignore[attr-defined]
    return run


# Candidates of the corpus-level constants, each chosen leave-one-source-out: the last point's share of the level's
# weight (average.py); in an experiment, the warm-up rule's share of the log-compute range (exclusion.py).
SHARES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
WARMUPS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)

METHODS = {
    "last value": naive(last_value),
    "last-3 mean": naive(last_mean),
    "plain curve_fit": plain_curve_fit,
    # issue 14's: hard switch, unweighted, no prior, warm-up 10% of the log range
    "old default": _scalerl(point="switch", weighting=False, prior=None, warmup=0.1),
    # Ablations of issue 24's first round, one ingredient at a time (warm-up 10%).
    "+ averaging": _scalerl(weighting=False, prior=None, persistence=0.0, warmup=0.1),
    "+ noise weights": _scalerl(prior=None, persistence=0.0, warmup=0.1),
    "round-1 default": _scalerl(learned_prior=True, persistence=0.0, warmup=0.1),  # + the prior, learned LOSO
    # + the last point's share of the level's weight, chosen with the floor leaving out the scored source (the default
    # from the end of round 1 to round 2).
    "round-2 default": _scalerl(learned_prior=True, warmup=0.1, sweep=("persistence", SHARES)),
    # The warm-up rule's share of the log-compute range (exclusion.py) chosen leave-one-source-out among WARMUPS ...
    "+ warm-up share": _scalerl(learned_prior=True, persistence=0.8, sweep=("warmup", WARMUPS)),
    # ... and the default of the second to fifth rounds: the warm-up share fixed at 0.6, the last point's share
    # chosen leave-one-source-out.
    "round-5 default": _scalerl(learned_prior=True, warmup=0.6, sweep=("persistence", SHARES)),
    # The default since the sixth round: the library's constants (warm-up 10% of the log range, no share for the last
    # point), the same forecasts as round 1's; only the floor is chosen leave-one-source-out, as in every row.
    "default": _scalerl(learned_prior=True),
    # Issue 24's seventh round: the shape prior from the other runs of the file (a sweep of one recipe), cut at the
    # same share, instead of the corpus's (`--prior peers`).
    "peers' prior": _scalerl(learned_prior=True, peers=True),
}
NAIVE = ("last value", "last-3 mean")


def evaluate(curves, methods, n_boot, cuts=CUTS):
    """Per method, one record per backtest: (source, curve, cut, y, {key: (prediction, (lo, hi))}, rising).

    rising: the later points' mean lies more than 2 noise sd from the last-3 mean before the cut (the noise sd from
    the head's one-step differences, robustly); an after-the-fact label used only to split the scores.
    The shape prior of a curve is learned from the whole runs of the other sources only."""
    rows = {m: [] for m in methods}
    priors = {s: learn_priors([c for c in curves if c.group != s]) for s in sorted({c.group for c in curves})}
    peers = _peer_priors(curves, cuts, priors) if any(getattr(METHODS[m], "peers", False) for m in methods) else {}
    t0 = time.perf_counter()
    for i, c in enumerate(curves):
        if i and i % 25 == 0:  # minutes of fitting: progress on stderr, the table on stdout
            print(f"  scored {i}/{len(curves)} runs ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        for frac in cuts:
            head, xt, yt = head_and_tail(c, frac)
            if len(xt) == 0 or np.sum(head.x > 0) < MIN_HEAD:
                continue
            rising = bool(abs(np.mean(yt) - np.mean(head.y[-3:])) > 2 * _noise_sd(head))
            for m in methods:
                try:
                    prior = peers[(c.name, frac)] if getattr(METHODS[m], "peers", False) else priors[c.group]
                    cands = METHODS[m](head, xt, n_boot, prior)
                except InputError:  # a method that cannot forecast falls back to the last value, no interval
                    nan = np.full(len(xt), np.nan)
                    cands = {None: (np.full(len(xt), head.y[-1]), (nan, nan))}
                rows[m].append((c.group, c.name, frac, yt, cands, rising))
    return rows


def _peer_priors(curves, cuts, priors) -> dict:
    """(run, cut) -> the shape prior of the other runs of its file (a sweep of one recipe), each cut at the same
    share as if they ran side by side: corpus.peer_priors, as `scalerl fit --prior peers` applies it; with fewer than
    MIN_PEERS fitted peers, the corpus prior learned without the source."""
    by_file: dict[str, list] = {}
    for c in curves:
        by_file.setdefault(c.name.split(":", 1)[0], []).append(c)
    out = {}
    for runs in by_file.values():
        for frac in cuts:
            heads = [[head_and_tail(c, frac)[0]] for c in runs]
            for c, prior in zip(runs, peer_priors(heads, priors[runs[0].group])):
                out[(c.name, frac)] = prior
    return out


def _keys(records):
    return sorted({k for r in records for k in r[4]}, key=lambda k: (k is not None, str(k)))


def _bounded(band):
    """A method that failed to give an interval is scored as claiming the metric's whole range."""
    lo, hi = band
    return np.where(np.isfinite(lo), lo, 0.0), np.where(np.isfinite(hi), hi, 1.0)


def _mean_is(records, key):
    scores = [interval_score(y, *_bounded(c[key][1]), LEVEL) for _, _, _, y, c, _ in records]
    return float(np.mean(np.concatenate(scores)))


def loso_choice(records):
    """Each backtest's (prediction, interval) under the key chosen on the other sources (best mean interval
    score), and the keys chosen per source."""
    chosen = {}
    for s in sorted({r[0] for r in records}):
        others = [r for r in records if r[0] != s]
        chosen[s] = min(_keys(records), key=lambda k: _mean_is(others, k))
    return [r[4][chosen[r[0]]] for r in records], chosen


def summarise(rows, cuts=CUTS):
    naive_mae = {m: np.array([np.mean(np.abs(r[4][None][0] - r[3])) for r in rows[m]]) for m in NAIVE if m in rows}
    better = np.minimum(*naive_mae.values())
    naive_is = min(_mean_is(rows[m], None) for m in naive_mae)
    srcs = {r[0] for r in rows[NAIVE[0]]}
    naive_is_src = {s: min(_mean_is([r for r in rows[m] if r[0] == s], None) for m in naive_mae) for s in srcs}
    out = {}
    for m, recs in rows.items():
        picked, chosen = loso_choice(recs)
        y = np.concatenate([r[3] for r in recs])
        err = np.abs(np.concatenate([p for p, _ in picked]) - y)
        lo = np.concatenate([_bounded(b)[0] for _, b in picked])
        hi = np.concatenate([_bounded(b)[1] for _, b in picked])
        inside = (y >= lo) & (y <= hi)
        src = np.concatenate([[r[0]] * len(r[3]) for r in recs])
        by_source = {s: float(inside[src == s].mean()) for s in np.unique(src)}
        worst = min(by_source, key=by_source.get)
        score = interval_score(y, lo, hi, LEVEL)
        mae = np.array([np.mean(np.abs(p - r[3])) for (p, _), r in zip(picked, recs)])
        beats, ratio = mae < better, mae / np.maximum(better, 1e-12)
        rising = np.array([r[5] for r in recs])
        cut = np.array([r[2] for r in recs])
        out[m] = {
            "coverage": float(inside.mean()),
            "worst": (by_source[worst], worst),
            "by_source": by_source,
            "is": float(np.mean(score)),
            "is_ratio": float(np.mean(score)) / naive_is,
            "width": float(np.mean(hi - lo)),
            "mae": float(err.mean()),
            "beats": float(np.mean(beats)),
            "ratio": float(np.median(ratio)),
            "rising": (float(np.mean(beats[rising])), float(np.median(ratio[rising])), int(rising.sum())),
            "flat": (float(np.mean(beats[~rising])), float(np.median(ratio[~rising])), int((~rising).sum())),
            "chosen": sorted({k for k in chosen.values() if k is not None}, key=str),
            "key_all": min(_keys(recs), key=lambda k: _mean_is(recs, k)),
            "mae_by_source": {s: float(err[src == s].mean()) for s in np.unique(src)},
            # the interval score on each source over the better naive forecaster's on that source
            "is_by_source": {s: float(score[src == s].mean()) / naive_is_src[s] for s in np.unique(src)},
            "by_cut": {f: (float(np.mean(beats[cut == f])), float(np.median(ratio[cut == f]))) for f in cuts},
        }
    return out


def _noise_sd(head) -> float:
    """The head's evaluation noise: robust sd of its one-step differences over sqrt(2)."""
    d = np.diff(head.y[head.x > 0])
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2))


# E[interval score] / sigma of the exact central 90% interval of a normal variable: 2 z + (2 / alpha) 2 (phi(z) - z
# (1 - Phi(z))) with z = 1.645; about 4.13.
_Z = NormalDist().inv_cdf(0.5 + LEVEL / 2)
IS_PER_SD = 2 * _Z + (2 / (1 - LEVEL)) * 2 * (NormalDist().pdf(_Z) - _Z * (1 - NormalDist().cdf(_Z)))


def oracles(curves, cuts=CUTS):
    """Reference rows that see the future (not forecasts): how far below the naive forecasters any forecast could go.

    future median: the median of the scored points themselves, held flat; whole-run sigmoid: the default fit of the
    whole run, cut included, evaluated at the scored points. Returns ({name: (beats, ratio, rising, flat)} in the
    metrics of summarise, the noise floor of the interval score): the mean interval score of a forecaster that knows
    the true mean curve and the noise, IS_PER_SD x the noise sd, with the binomial sd from the sample counts where
    they are known (p the observed value, kept in [0.05, 0.95]) and the head's one-step noise elsewhere."""
    recs = {"future median": [], "whole-run sigmoid": []}
    nb, rising, floor = [], [], []
    for c in curves:
        for frac in cuts:
            head, xt, yt = head_and_tail(c, frac)
            if len(xt) == 0 or np.sum(head.x > 0) < MIN_HEAD:
                continue
            nb.append(min(np.mean(np.abs(yt - head.y[-1])), np.mean(np.abs(yt - np.mean(head.y[-3:])))))
            rising.append(abs(np.mean(yt) - np.mean(head.y[-3:])) > 2 * _noise_sd(head))
            recs["future median"].append(np.mean(np.abs(yt - np.median(yt))))
            whole = fit_curves([c], FitOptions(n_boot=20, interval="bootstrap"))
            recs["whole-run sigmoid"].append(np.mean(np.abs(whole.params(xt) - yt)))
            if c.samples is not None:
                p = np.clip(yt, 0.05, 0.95)
                sd = np.sqrt(p * (1 - p) / np.interp(xt, c.x, c.samples))
            else:
                sd = np.full(len(yt), _noise_sd(head))
            floor.append(IS_PER_SD * sd)
    nb, rising = np.array(nb), np.array(rising)
    out = {}
    for name, mae in recs.items():
        mae = np.array(mae)
        b, q = mae < nb, mae / np.maximum(nb, 1e-12)
        out[name] = (
            float(b.mean()),
            float(np.median(q)),
            (float(b[rising].mean()), float(np.median(q[rising]))),
            (float(b[~rising].mean()), float(np.median(q[~rising]))),
        )
    return out, float(np.mean(np.concatenate(floor)))


def speed(n_boot=1000):
    """Fit + intervals + a forecast for a 1,000-point curve, one core: issue 14's default, the default of issue 24's
    second to fifth rounds and the current one (the same run, best of 5)."""
    rng = np.random.default_rng(0)
    x = np.linspace(1.0, 5000.0, 1000)
    y = 0.43 + 0.22 / (1.0 + (300.0 / x) ** 1.2) + rng.normal(0, 0.01, 1000)
    c = Curve("speed", x, y, "step", "pass_rate", samples=np.full(1000, 2000.0))
    t = {}
    variants = (
        ("old default", dict(point="switch", weighting=False, prior=None, warmup=0.1)),
        ("round-5 default", dict(warmup=0.6, persistence=0.8)),
        ("default", {}),
    )
    for name, opts in variants:
        best = np.inf
        for _ in range(5):
            t0 = time.perf_counter()
            fit = fit_curves([c], FitOptions(n_boot=n_boot, **opts))
            forecast_points(fit, np.array([1e4, 5e4]))
            best = min(best, time.perf_counter() - t0)
        t[name] = best
    return t


def _key(k) -> str:
    return "-" if k is None else (f"{k[0]:g}, floor {k[1]:g}" if isinstance(k, tuple) else f"floor {k:g}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, nargs="+", default=list(DEFAULT_DATA), help="folders of run,x,y CSVs")
    ap.add_argument("--n-boot", type=int, default=300)
    ap.add_argument("--skip", nargs="*", default=[], help="methods to leave out")
    ap.add_argument("--only", nargs="*", help="only these curve-name prefixes")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--no-oracles", action="store_true", help="leave out the reference rows that see the future")
    ap.add_argument(
        "--protocol",
        choices=("cuts", HALF),
        default="cuts",
        help=f"cuts: at {CUTS} of the compute range, up to {TEST_POINTS} later points; half: at half the points, "
        "every later point (issue 24's held-back scoring)",
    )
    ap.add_argument(
        "--thin",
        type=int,
        metavar="N",
        help="keep N evenly spaced evaluations of every run (runs with fewer are left out): short runs, as figures "
        "and sparse evaluations give",
    )
    args = ap.parse_args()
    cuts = CUTS if args.protocol == "cuts" else (HALF,)
    curves = load_corpus(args.data)
    if args.thin:
        curves = [thinned(c, args.thin) for c in curves if len(c.x) >= args.thin]
    if args.only:
        curves = [c for c in curves if c.name.startswith(tuple(args.only))]
    if len({c.group for c in curves}) < 2:  # the prior and the constants are learned on the other sources
        ap.error("leave-one-source-out needs runs of two sources or more (--data, --only)")
    methods = [m for m in METHODS if m not in args.skip or m in NAIVE]
    t0 = time.perf_counter()
    summary = summarise(evaluate(curves, methods, args.n_boot, cuts), cuts)
    sources = sorted({c.group for c in curves})
    counts = {s: sum(c.group == s for c in curves) for s in sources}
    print(
        f"{len(curves)} curves ({', '.join(f'{s} {n}' for s, n in counts.items())}) x "
        + (
            f"cuts {CUTS}, up to {TEST_POINTS} later points each"
            if cuts == CUTS
            else "a cut at half the points, every later point"
        )
        + f"; nominal {LEVEL:.0%} intervals; leave-one-source-out; n_boot "
        f"{args.n_boot}; {time.perf_counter() - t0:.0f} s"
    )
    any_s = next(iter(summary.values()))
    n_r, n_f = any_s["rising"][2], any_s["flat"][2]
    head = f"{'method':20s} {'coverage':>8s} {'worst source':>18s} {'IS':>7s} {'IS/naive':>8s} {'width':>6s} "
    print(
        head + f"{'MAE':>7s} {'beats naive':>11s} {'ratio':>6s} {f'rising ({n_r})':>13s} {f'flat ({n_f})':>12s}  "
        "chosen leave-one-source-out (on all sources)"
    )
    for m, s in summary.items():
        wv, wn = s["worst"]
        print(
            f"{m:20s} {s['coverage']:8.2f} {f'{wv:.2f} {wn}':>18s} {s['is']:7.4f} {s['is_ratio']:8.2f} "
            f"{s['width']:6.3f} {s['mae']:7.4f} {s['beats']:11.2f} {s['ratio']:6.2f} "
            f"{s['rising'][0]:8.2f} {s['rising'][1]:4.2f} {s['flat'][0]:7.2f} {s['flat'][1]:4.2f}  "
            f"{'; '.join(_key(k) for k in s['chosen']) or '-'}"
            + ("" if s["key_all"] is None else f" ({_key(s['key_all'])})")
        )
    if not args.no_oracles:
        print("reference rows that see the future (not forecasts): beats naive, ratio; rising; flat")
        rows, floor = oracles(curves, cuts)
        for name, (b, q, r, f) in rows.items():
            print(f"  oracle: {name:18s} {b:5.2f} {q:5.2f};  {r[0]:5.2f} {r[1]:5.2f};  {f[0]:5.2f} {f[1]:5.2f}")
        naive_is = min(summary[m]["is"] for m in NAIVE)
        print(f"  noise floor of IS (true mean and noise known): {floor:.4f}, {floor / naive_is:.2f} x naive")
    print("by cut (beats naive / ratio):")
    for m, s in summary.items():
        if m not in NAIVE:
            print(f"  {m:20s} " + "  ".join(f"{f}: {b:.2f}/{q:.2f}" for f, (b, q) in s["by_cut"].items()))
    print("by source (coverage / MAE / IS over the better naive forecaster's on the source):")
    for m, s in summary.items():
        cells = "  ".join(
            f"{k} {s['by_source'][k]:.2f}/{s['mae_by_source'][k]:.4f}/{s['is_by_source'][k]:.2f}"
            for k in sources
            if k in s["by_source"]  # a source whose runs are all too short for a backtest under --protocol half
        )
        print(f"  {m:20s} {cells}")
    if not args.no_speed:
        t = speed()
        print(
            "speed, 1,000-point curve, fit + 1,000-replica intervals + forecast, one core: "
            + ", ".join(f"{k} {v:.3f} s" for k, v in t.items())
            + f" (default / round 5 {t['default'] / t['round-5 default']:.2f}, "
            f"default / old {t['default'] / t['old default']:.2f})"
        )


if __name__ == "__main__":
    main()
