"""How far any weighting of the default's members could take the forecasts: the limits behind issue 24's goals.

Run: nice -n 10 python bench/forecast_limits.py [--data DIR ...] [--n-boot 300] [--protocol cuts|half] [--only-clean]

The same backtests as bench/bench_forecast.py (every development run cut at 0.3, 0.5 and 0.7 of its compute
range, up to 12 later points scored, the shape prior learned without the scored source; `--protocol half` cuts
each run at half its points and scores every later point, as issue 24 scores its held-back curves). Each backtest
is fitted once with the default, and the members of its averaged forecast (average.py: the late-run sigmoid, the
recent level, the last value) are kept at the scored points. Then, without refitting:

1. Do the per-run weights know which member will win? The sigmoid's weight, binned, against how often the sigmoid
   then beat the recent level on the scored points, and how well that weight and other signals from before the cut
   rank the backtests the sigmoid won (AUC).
2. Reference rows that see the future: the best member per backtest, and the best mix of the members (weights on a
   0.1 grid), each chosen after the fact. No weighting of these members beats both naive forecasters on more
   backtests than the best mix of all three does (up to the grid). The last row adds a member the default does not
   have, a straight line in log-compute through the recent level with the slope of the last half of the fitted
   points: what a new member could add if the weights knew when to use it.
3. Fixed weights (stacking): forecast = a sigmoid + b last value + (1 - a - b) level, (a, b) chosen for each source
   on the other sources (the most backtests beating both naive forecasters, then the lower median ratio); then the
   per-run weights shrunk towards those fixed ones.
4. The band scaled about the point forecast by a corpus-level factor, chosen leave-one-source-out by the interval
   score: whether the intervals are too wide or too narrow on the whole.
5. Where the pooled interval score comes from: the share of it in the ten worst backtests.
6. Cross-run signal (issue 24's "joint fits that share B or C_mid across seeds of one recipe"): the runs of one file
   are a sweep of one recipe (learning rates, rewards, model sizes, GRPO variants; no file holds seeds), cut at the
   same share of their compute as if they ran side by side. Each backtest is refitted with the shape prior taken
   from its peers' cut runs instead of the corpus (their robust moments, the corpus prior's floors on the spread),
   and with the corpus prior updated by the peers' median (precision-weighted, the median's variance pi/2 x sd^2 / n).

7. The noise ceiling: how far the curve must move after the cut, in noise standard deviations, before even a
   forecaster that knows the true curve beats both naive forecasters by the goal's margin (simulated), and the share
   of backtests whose future hardly moves.
8. Clean curves of known shape (simulated): the default, plain curve_fit and both naive forecasters on a sigmoid in
   log-compute (the model's own shape), a saturating exponential in compute and an unbounded rise in log-compute,
   binomial-sized noise, cut at half the points. Where a run moves and follows a smooth shape, this is what the
   forecasts reach; `--only-clean` runs this section alone (a minute).

Metrics as in bench_forecast.py: "beats" is the share of backtests whose MAE is below both naive forecasters' (the
last value, the last-3 mean); "ratio" the median of MAE over the better of the two per backtest.
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import itertools  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy.stats import rankdata  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forecast import (  # noqa: E402
    CUTS,
    DEFAULT_DATA,
    HALF,
    LEVEL,
    MIN_HEAD,
    head_and_tail,
    load_corpus,
    plain_curve_fit,
)

from scalerl.curvefit.average import LAST  # noqa: E402
from scalerl.curvefit.corpus import learn_priors  # noqa: E402
from scalerl.curvefit.data import Curve  # noqa: E402
from scalerl.curvefit.exclusion import RANGE_FRACTION  # noqa: E402
from scalerl.curvefit.extrapolation import recent_level  # noqa: E402
from scalerl.curvefit.fit import FitOptions, fit_curves  # noqa: E402
from scalerl.curvefit.naive import interval_score, last_mean, last_value  # noqa: E402
from scalerl.curvefit.priors import SD_FLOOR, ShapePrior  # noqa: E402

GRID = np.round(np.linspace(0.0, 1.0, 11), 2)
SIMPLEX = [(a, c) for a, c in itertools.product(GRID, GRID) if a + c <= 1.0 + 1e-9]  # (sigmoid, last) weights
SCALES = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2)
SHRINK = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class Backtest:
    source: str
    name: str
    cut: float
    y: np.ndarray  # the scored later points
    pred: np.ndarray  # the default's point forecast
    lo: np.ndarray
    hi: np.ndarray
    members: dict  # member name -> forecast at the scored points ("sigmoid", "level", LAST)
    weights: dict  # member name -> the default's per-run weight
    mse: dict  # member name -> mean squared error of its prefix forecasts (average.py)
    naive: dict  # "last value" / "last-3 mean" -> (point, lo, hi)
    features: dict  # what the run's past says before the cut (section 1)
    trend: np.ndarray  # not a member: the recent level plus the last half's slope in log-compute (reference only)

    def mae(self, p) -> float:
        return float(np.mean(np.abs(np.asarray(p, float) - self.y)))

    @property
    def better_naive(self) -> float:
        return min(self.mae(p) for p, _, _ in self.naive.values())

    def beats(self, p) -> bool:
        e = self.mae(p)
        return all(e < self.mae(q) for q, _, _ in self.naive.values())


def _last_half_line(fit):
    """The fitted points, and the least-squares line y = slope log x + icpt through their last half."""
    x, y = fit.x[fit.used], fit.y[fit.used]
    half = max(4, len(x) // 2)
    slope, icpt = np.polyfit(np.log(x[-half:]), y[-half:], 1)
    return x, y, half, slope, icpt


def _features(fit) -> dict:
    x, y, half, slope, icpt = _last_half_line(fit)
    lx, yy = np.log(x[-half:]), y[-half:]
    se = np.sqrt(np.sum((yy - icpt - slope * lx) ** 2) / max(half - 2, 1) / max(np.sum((lx - lx.mean()) ** 2), 1e-12))
    return {
        "the sigmoid's per-run weight": fit.average.weight("sigmoid"),
        "the bend inside the fitted points (C_mid < last x)": float(fit.params.c_mid < x[-1]),
        "|t| of the last half's slope in log-compute": abs(slope) / max(se, 1e-12),
        "fitted points": float(len(x)),
    }


def _auc(score, label) -> float:
    """Probability that a backtest the sigmoid won scores higher than one it lost (ties count half)."""
    ranks = rankdata(score)
    pos = label.sum()
    return float((ranks[label].sum() - pos * (pos + 1) / 2) / (pos * (len(label) - pos)))


def _trend(fit, xt) -> np.ndarray:
    x, y, _, slope, _ = _last_half_line(fit)
    return recent_level(x, y).value + slope * np.log(np.asarray(xt, float) / x[-1])


def collect(curves, n_boot: int, cuts=CUTS) -> list[Backtest]:
    priors = {s: learn_priors([c for c in curves if c.group != s]) for s in sorted({c.group for c in curves})}
    out: list[Backtest] = []
    t0 = time.perf_counter()
    for i, c in enumerate(curves):
        for cut in cuts:
            head, xt, yt = head_and_tail(c, cut)
            if len(xt) == 0 or np.sum(head.x > 0) < MIN_HEAD:
                continue
            fit = fit_curves([head], FitOptions(n_boot=n_boot, level=LEVEL, prior=priors[c.group]))
            if fit.average is None:  # too few points for the run's own backtest: nothing to weigh
                continue
            av = fit.average
            lo, hi = fit.prediction_band(xt)
            naive = {"last value": last_value(head.y, len(xt), LEVEL), "last-3 mean": last_mean(head.y, len(xt), LEVEL)}
            out.append(
                Backtest(
                    c.group, c.name, cut, yt, np.asarray(fit.forecast(xt), float), lo, hi,
                    # The last value is a member of the mixes below even where the default gives it no weight
                    # (its share is 0 since the sixth round).
                    {LAST: np.full(len(xt), head.y[-1])}
                    | {n: np.asarray(f(xt), float) for n, f in zip(av.names, av.curves)},
                    dict(zip(av.names, av.weights)), dict(av.inner_mse), naive, _features(fit), _trend(fit, xt),
                )
            )  # fmt: skip
        if (i + 1) % 25 == 0 or i + 1 == len(curves):
            print(f"  fitted {i + 1}/{len(curves)} runs ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return out


def score(bts: list[Backtest], forecasts) -> tuple[float, float]:
    """(share beating both naive forecasters, median ratio to the better one) of forecasts[i] for bts[i]."""
    beats = [b.beats(p) for b, p in zip(bts, forecasts)]
    ratio = [b.mae(p) / max(b.better_naive, 1e-12) for b, p in zip(bts, forecasts)]
    return float(np.mean(beats)), float(np.median(ratio))


def _rank(beats_ratio):
    beats, ratio = beats_ratio
    return (-beats, ratio)


def mix(b: Backtest, w_sig: float, w_last: float) -> np.ndarray:
    m = b.members
    return w_sig * m["sigmoid"] + w_last * m[LAST] + (1.0 - w_sig - w_last) * m["level"]


def weights_vs_winner(bts):
    print("1. the per-run sigmoid weight against the after-the-fact winner (sigmoid vs recent level)")
    w = np.array([b.weights["sigmoid"] for b in bts])
    won = np.array([b.mae(b.members["sigmoid"]) < b.mae(b.members["level"]) for b in bts])
    for lo, hi in ((0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0001)):
        sel = (w >= lo) & (w < hi)
        if sel.any():
            share = won[sel].mean()
            print(f"   sigmoid weight {lo:.1f}-{min(hi, 1):.1f}: {sel.sum():3d} backtests, sigmoid won {share:.2f}")
    # The verdict `scalerl forecast` prints ("on this run's own backtest the sigmoid beats persistence").
    says = np.array([b.mse["sigmoid"] < b.mse["level"] for b in bts])
    for verdict, sel in (("beats", says), ("does not beat", ~says)):
        print(f"   the run's own backtest says the sigmoid {verdict} persistence: {sel.sum():3d} backtests, "
              f"sigmoid won {won[sel].mean():.2f}")  # fmt: skip
    print(f"   how well each signal ranks the backtests the sigmoid won (AUC, 0.5 is a coin; it won {won.mean():.2f})")
    for name in bts[0].features:
        print(f"   {name:52s} {_auc(np.array([b.features[name] for b in bts]), won):.2f}")


def oracles(bts):
    print("2. reference rows that see the future (beats both naive, median ratio)")
    best_member = [min(b.members.values(), key=b.mae) for b in bts]
    best_pair = [min((mix(b, a, 1.0 - a) for a in GRID), key=b.mae) for b in bts]
    best_mix = [min((mix(b, a, c) for a, c in SIMPLEX), key=b.mae) for b in bts]
    with_trend = [min((t * b.trend + (1 - t) * mix(b, a, c) for a, c in SIMPLEX for t in GRID), key=b.mae) for b in bts]
    for name, fc in (
        ("best member per backtest", best_member),
        ("best sigmoid/last mix per backtest", best_pair),
        ("best mix of all three per backtest", best_mix),
        ("... and of a log-linear trend", with_trend),
    ):
        print(f"   {name:38s} {score(bts, fc)[0]:.2f} {score(bts, fc)[1]:.2f}")
    print(f"   {'default (per-run weights)':38s} {score(bts, [b.pred for b in bts])[0]:.2f} "
          f"{score(bts, [b.pred for b in bts])[1]:.2f}")  # fmt: skip


def stacking(bts):
    print("3. fixed weights chosen leave-one-source-out (beats both naive, median ratio)")
    srcs = sorted({b.source for b in bts})
    fixed, chosen = {}, {}
    for s in srcs:
        others = [b for b in bts if b.source != s]
        # The goal's own measure: most backtests beating both naive forecasters, then the lower median ratio.
        chosen[s] = min(SIMPLEX, key=lambda ac: _rank(score(others, [mix(b, *ac) for b in others])))
        for i, b in enumerate(bts):
            if b.source == s:
                fixed[i] = mix(b, *chosen[s])
    fc = [fixed[i] for i in range(len(bts))]
    picks = ", ".join(f"{s} ({a:g}, {c:g})" for s, (a, c) in chosen.items())
    print(f"   {'fixed (sigmoid, last) weights':38s} {score(bts, fc)[0]:.2f} {score(bts, fc)[1]:.2f}   chosen: {picks}")
    for lam in SHRINK:
        fc = []
        for b in bts:
            a, c = chosen[b.source]
            ws, wl = b.weights["sigmoid"], b.weights.get(LAST, 0.0)
            fc.append(mix(b, lam * ws + (1 - lam) * a, lam * wl + (1 - lam) * c))
        print(f"   {f'{lam:g} x per-run + {1 - lam:g} x fixed':38s} {score(bts, fc)[0]:.2f} {score(bts, fc)[1]:.2f}")


def naive_is(bts) -> float:
    """The pooled interval score of the better naive forecaster on these backtests."""
    return min(
        float(np.mean(np.concatenate([interval_score(b.y, b.naive[k][1], b.naive[k][2], LEVEL) for b in bts])))
        for k in ("last value", "last-3 mean")
    )


def _band(b: Backtest, s: float):
    lo = np.maximum(b.pred - s * (b.pred - b.lo), 0.0)
    hi = np.minimum(b.pred + s * (b.hi - b.pred), 1.0)
    return lo, hi


def _pooled(bts, s):
    bands = [_band(b, s) for b in bts]
    is_ = np.concatenate([interval_score(b.y, lo, hi, LEVEL) for b, (lo, hi) in zip(bts, bands)])
    cov = np.concatenate([(b.y >= lo) & (b.y <= hi) for b, (lo, hi) in zip(bts, bands)])
    width = np.concatenate([hi - lo for lo, hi in bands])
    return float(is_.mean()), float(cov.mean()), float(width.mean())


def band_scale(bts):
    naive = naive_is(bts)
    print("4. the band scaled about the point forecast (pooled IS, IS over the better naive's, coverage, width)")
    for s in SCALES:
        is_, cov, width = _pooled(bts, s)
        print(f"   x {s:.1f}: {is_:.4f} {is_ / naive:.2f} {cov:.2f} {width:.3f}")
    srcs = sorted({b.source for b in bts})
    picked = {s: min(SCALES, key=lambda k: _pooled([b for b in bts if b.source != s], k)[0]) for s in srcs}
    scored = [(b, _band(b, picked[b.source])) for b in bts]
    is_ = np.concatenate([interval_score(b.y, lo, hi, LEVEL) for b, (lo, hi) in scored]).mean()
    cov = np.concatenate([(b.y >= lo) & (b.y <= hi) for b, (lo, hi) in scored]).mean()
    width = np.concatenate([hi - lo for _, (lo, hi) in scored]).mean()
    print(f"   leave-one-source-out: {is_:.4f} {is_ / naive:.2f} {cov:.2f} {width:.3f}   chosen: "
          + ", ".join(f"{s} {k:g}" for s, k in picked.items()))  # fmt: skip


def concentration(bts, top: int = 10):
    per = [(float(np.mean(interval_score(b.y, b.lo, b.hi, LEVEL))), b) for b in bts]
    width = [float(np.mean(b.hi - b.lo)) for b in bts]
    total = sum(s for s, _ in per)
    per.sort(key=lambda t: -t[0])
    head = per[:top]
    miss = sum(s - float(np.mean(b.hi - b.lo)) for s, b in head)
    held, missed, wide = sum(s for s, _ in head) / total, miss / total, sum(width) / total
    print(f"5. the {top} worst of {len(bts)} backtests hold {held:.0%} of the pooled interval score ({missed:.0%} as "
          f"misses); width is {wide:.0%} of the whole")  # fmt: skip
    for s, b in head:
        name = b.name if len(b.name) <= 60 else f"{b.name[:28]}...{b.name[-29:]}"
        naive = min(float(np.mean(interval_score(b.y, lo, hi, LEVEL))) for _, lo, hi in b.naive.values())
        print(f"   {name:60s} cut {b.cut}  IS {s:.2f} (naive {naive:.2f})  width {np.mean(b.hi - b.lo):.3f}")


def _shape(head):
    """(log B, headroom) of an unpenalised fit of a cut run, as corpus.learn_priors measures whole runs."""
    try:
        p = fit_curves([head], FitOptions(n_boot=30, interval="bootstrap", prior=None, warmup=RANGE_FRACTION)).params
    except (ValueError, RuntimeError):
        return None
    return np.log(p.B), (p.A - p.R0) / max(1.0 - p.R0, 1e-9)


def _robust(v):
    v = np.asarray(v, float)
    med = float(np.median(v))
    return med, float(1.4826 * np.median(np.abs(v - med)))


def _updated(corpus: tuple[float, float], peers: tuple[float, float], n: int, floor: float) -> tuple[float, float]:
    v0, v1 = corpus[1] ** 2, np.pi / 2 * max(peers[1], floor) ** 2 / n
    return (corpus[0] / v0 + peers[0] / v1) / (1 / v0 + 1 / v1), max(float(np.sqrt(1 / (1 / v0 + 1 / v1))), floor)


def peer_priors(curves, bts: list[Backtest], n_boot: int, cuts=CUTS):
    print("6. the shape prior from the other runs of the same file, cut at the same share (beats both naive, median "
          "ratio, IS over the better naive's, coverage, width)")  # fmt: skip
    priors = {s: learn_priors([c for c in curves if c.group != s]) for s in sorted({c.group for c in curves})}
    by_file: dict[str, list] = {}
    for c in curves:
        by_file.setdefault(c.name.split(":", 1)[0], []).append(c)
    done = {(b.name, b.cut): i for i, b in enumerate(bts)}
    rows: dict[str, list] = {"corpus prior (the default)": [], "peers' prior": [], "corpus prior updated by peers": []}
    kept = []
    for runs in by_file.values():
        for cut in cuts:
            heads = [head_and_tail(c, cut) for c in runs]
            shapes = [_shape(h) if np.sum(h.x > 0) >= MIN_HEAD else None for h, _, _ in heads]
            for i, (c, (head, xt, _)) in enumerate(zip(runs, heads)):
                peers = [s for j, s in enumerate(shapes) if j != i and s is not None]
                if (c.name, cut) not in done or len(peers) < 2:
                    continue
                b, corpus = bts[done[(c.name, cut)]], priors[c.group]
                lb, hr = _robust([p[0] for p in peers]), _robust([p[1] for p in peers])
                alt = {
                    "peers' prior": ShapePrior((lb[0], max(lb[1], SD_FLOOR[0])), (hr[0], max(hr[1], SD_FLOOR[1]))),
                    "corpus prior updated by peers": ShapePrior(
                        _updated(corpus.log_b, lb, len(peers), SD_FLOOR[0]),
                        _updated(corpus.headroom, hr, len(peers), SD_FLOOR[1]),
                    ),
                }
                rows["corpus prior (the default)"].append((b.pred, b.lo, b.hi))
                for name, prior in alt.items():
                    fit = fit_curves([head], FitOptions(n_boot=n_boot, level=LEVEL, prior=prior))
                    rows[name].append((np.asarray(fit.forecast(xt), float), *fit.prediction_band(xt)))
                kept.append(b)
    naive = naive_is(kept)
    for name, fc in rows.items():
        beats, ratio = score(kept, [p for p, _, _ in fc])
        is_ = np.concatenate([interval_score(b.y, lo, hi, LEVEL) for b, (_, lo, hi) in zip(kept, fc)]).mean()
        cov = np.concatenate([(b.y >= lo) & (b.y <= hi) for b, (_, lo, hi) in zip(kept, fc)]).mean()
        width = np.concatenate([hi - lo for _, lo, hi in fc]).mean()
        print(f"   {name:38s} {beats:.2f} {ratio:.2f} {is_ / naive:.2f} {cov:.2f} {width:.3f} ({len(kept)})")


def _flat_ceiling(n: int, rise: float, reps: int, rng) -> tuple[float, float]:
    """Beats-both share and median ratio of a forecaster that knows the true curve: a head of n flat points and a
    future of n whose mean rises linearly by `rise` noise standard deviations over it, Gaussian noise."""
    mu = rise * np.arange(1, n + 1) / n
    head, fut = rng.normal(0, 1, (reps, n)), mu + rng.normal(0, 1, (reps, n))
    last = np.abs(fut - head[:, -1:]).mean(1)
    last3 = np.abs(fut - head[:, -3:].mean(1, keepdims=True)).mean(1)
    best, truth = np.minimum(last, last3), np.abs(fut - mu).mean(1)
    return float(np.mean(truth < best)), float(np.median(truth / best))


def noise_ceiling(bts, reps: int = 4000):
    """7. What the noise of the scored points leaves to win. Both naive forecasters err by the future's own noise plus
    their miss of its level; where the curve hardly moves after the cut, the noise dominates every forecaster's
    error, and even the true curve is barely better than the last-3 mean."""
    rng = np.random.default_rng(0)
    rises = (0.0, 0.5, 1.0, 2.0, 4.0)
    print("7. a forecaster that knows the true curve, against both naive forecasters (simulated, Gaussian noise;")
    print("   beats both / median ratio), by how far the curve moves over the scored points, in noise sds:")
    print("     points (head = future)  " + "  ".join(f"{r:>9g}" for r in rises))
    for n in (20, 50, 100):
        cells = [_flat_ceiling(n, r, reps, rng) for r in rises]
        print(f"     {n:<24d}" + "  ".join(f"{b:.2f} {q:.2f}" for b, q in cells))
    move = []
    for b in bts:
        sd = 1.4826 * np.median(np.abs(np.diff(b.y) - np.median(np.diff(b.y)))) / np.sqrt(2) if len(b.y) > 2 else 0.0
        move.append(abs(np.median(b.y) - b.naive["last-3 mean"][0].mean()) / max(sd, 1e-9))
    move = np.asarray(move)
    flat = move < 1.0
    beats = np.array([b.beats(b.pred) for b in bts])
    ratio = np.array([b.mae(b.pred) / max(b.better_naive, 1e-12) for b in bts])
    print(f"   on these backtests: the future's median lies within 1 noise sd of the last-3 mean on {flat.mean():.2f};")
    for name, m in (("there", flat), ("elsewhere", ~flat)):
        if m.any():
            b, r = beats[m].mean(), np.median(ratio[m])
            print(f"     default {name:9s} beats both {b:.2f}, median ratio {r:.2f} ({m.sum()})")


CLEAN_SHAPES = ("sigmoid in log-compute", "saturating exponential", "rise in log-compute")


def _clean_curve(shape: str, n: int, sd: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """n evaluations at even steps of compute, the first before any training (x = 0, as a run dir's step 0): the
    noisy evaluation (sd `sd`, clipped to the metric's range). Parameters drawn over what RL post-training runs show:
    a start of 0.1-0.3, a ceiling of 0.5-0.75, a rise of 0.1-0.4 in log-compute over the run."""
    x = np.linspace(0.0, 1.0, n)
    r0, a = rng.uniform(0.1, 0.3), rng.uniform(0.5, 0.75)
    if shape == CLEAN_SHAPES[0]:
        with np.errstate(divide="ignore"):
            true = r0 + (a - r0) / (1 + (rng.uniform(0.15, 0.8) / x) ** rng.uniform(1.0, 2.5))
    elif shape == CLEAN_SHAPES[1]:
        true = a - (a - r0) * np.exp(-x / rng.uniform(0.1, 0.6))
    else:
        scale = rng.uniform(0.01, 0.1)
        true = r0 + rng.uniform(0.1, 0.4) * np.log1p(x / scale) / np.log1p(1 / scale)
    return x, np.clip(true + rng.normal(0, sd, n), 0.0, 1.0)


def clean_curves(n_boot: int, reps: int = 40) -> None:
    """8. The same scores on clean simulated curves: what the forecasts reach where a run follows a smooth shape."""
    rng = np.random.default_rng(0)
    methods = ("default", "plain curve_fit")
    print("8. clean simulated curves cut at half the points (beats both naive / median ratio / coverage / interval")
    print(f"   score over the better naive forecaster's; {reps} curves a cell, 30 or 60 evaluations, n_boot {n_boot}):")
    print("     shape                     noise sd  " + "  ".join(f"{m:>24s}" for m in methods))
    for shape in CLEAN_SHAPES:
        for sd in (0.003, 0.01, 0.02):
            scores: dict[str, list] = {m: [] for m in methods}
            naive_is = {k: [] for k in ("last value", "last-3 mean")}
            for _ in range(reps):
                x, y = _clean_curve(shape, int(rng.choice([30, 60])), sd, rng)
                head, xt, yt = head_and_tail(Curve("clean", x, y, "compute", "reward"), HALF)
                naive = {
                    "last value": last_value(head.y, len(xt), LEVEL),
                    "last-3 mean": last_mean(head.y, len(xt), LEVEL),
                }
                better = min(float(np.mean(np.abs(q - yt))) for q, _, _ in naive.values())
                for k, (_, lo, hi) in naive.items():
                    naive_is[k].append(float(np.mean(interval_score(yt, lo, hi, LEVEL))))
                fit = fit_curves([head], FitOptions(n_boot=n_boot, level=LEVEL))
                out = {"default": (fit.forecast(xt), *fit.prediction_band(xt))}
                ((p, (plo, phi)),) = plain_curve_fit(head, xt, n_boot, None).values()
                out["plain curve_fit"] = (p, plo, phi)
                for m, (p, lo, hi) in out.items():
                    err = float(np.mean(np.abs(p - yt)))
                    cov = float(np.mean((yt >= lo) & (yt <= hi)))  # a failed plain fit's NaN band covers nothing
                    is_ = float(np.mean(interval_score(yt, lo, hi, LEVEL)))
                    scores[m].append((err < better, err / max(better, 1e-12), cov, is_))
            naive_pooled = min(np.mean(v) for v in naive_is.values())
            cells = []
            for m in methods:
                a = np.array(scores[m], float)
                is_ratio = np.nanmean(a[:, 3]) / naive_pooled
                cells.append(f"{a[:, 0].mean():.2f} {np.median(a[:, 1]):.2f} {a[:, 2].mean():.2f} {is_ratio:.2f}")
            print(f"     {shape:25s} {sd:8.3f}  " + "  ".join(f"{c:>24s}" for c in cells))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, nargs="+", default=list(DEFAULT_DATA), help="folders of run,x,y CSVs")
    ap.add_argument("--n-boot", type=int, default=300)
    ap.add_argument(
        "--protocol",
        choices=("cuts", HALF),
        default="cuts",
        help="cuts: at (0.3, 0.5, 0.7) of the compute range, up to 12 later points; half: at half the points, every "
        "later point (issue 24's held-back scoring, as bench_forecast.py --protocol half)",
    )
    ap.add_argument("--only-clean", action="store_true", help="section 8 alone (simulated clean curves, no corpus)")
    args = ap.parse_args()
    cuts = (HALF,) if args.protocol == HALF else CUTS
    warnings.simplefilter("ignore")
    if args.only_clean:
        clean_curves(args.n_boot)
        return
    curves = load_corpus(args.data)
    print(f"{len(curves)} curves; fitting every backtest once with the default", file=sys.stderr)
    bts = collect(curves, args.n_boot, cuts)
    print(f"{len(bts)} backtests with a weighted forecast, {len({b.source for b in bts})} sources")
    weights_vs_winner(bts)
    oracles(bts)
    stacking(bts)
    band_scale(bts)
    concentration(bts)
    noise_ceiling(bts)
    peer_priors(curves, bts, args.n_boot, cuts)
    clean_curves(args.n_boot)


if __name__ == "__main__":
    main()
