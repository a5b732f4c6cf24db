"""Compare fitted runs the paper's way, with intervals a decision can rest on.

ScaleRL compares recipes by their ceiling A first; when two ceilings lie within the uncertainty of A
(the paper uses 0.02; here also whenever the two A intervals overlap), the runs are refitted with one shared A
and compared by B (efficiency: higher B reaches the ceiling with less compute). B under the shared A gets an
interval from a residual block bootstrap of that joint refit; when the two B intervals overlap the verdict is
"no significant difference". Where two curves cross, the compute at the crossing says from which budget on the
other recipe is ahead; its interval comes from pairing the two runs' bootstrap replicas.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from scipy.optimize import brentq, least_squares

from .bootstrap import _block_indices
from .curves import sigmoid_share
from .fit import CurveFit
from .sigmoid_fit import B_RANGE, log_cmid_bounds
from .thin import bin_points

A_TOLERANCE = 0.02
SHARED_BOOT = 200  # joint refits for the shared-A intervals (each is a small least-squares problem)
SHARED_POINTS = 400  # points per run in those refits: long runs are binned


def shared_a_fit(
    a: CurveFit, b: CurveFit, bound: float, level: float = 0.90, n_boot: int = SHARED_BOOT, seed: int = 0
) -> dict:
    """Refit two runs with one ceiling A and their own B, C_mid (R0 held at each run's value), with intervals."""
    data = []
    for f in (a, b):
        x, y = bin_points(f.x[f.used], f.y[f.used], SHARED_POINTS)
        data.append((np.log(x), y, f.params.R0))
    all_logc = np.concatenate([d[0] for d in data])
    lo_m, hi_m = log_cmid_bounds(all_logc)
    p0 = [0.5 * (a.params.A + b.params.A)]
    lo, hi = [max(a.params.R0, b.params.R0)], [bound]
    for f in (a, b):
        p0 += [np.log(f.params.B), np.log(f.params.c_mid)]
        lo += [np.log(B_RANGE[0]), lo_m]
        hi += [np.log(B_RANGE[1]), hi_m]
    lo_a, hi_a = np.array(lo), np.array(hi)
    hi_a = np.maximum(hi_a, lo_a + 1e-9)
    p0_a = np.clip(np.array(p0), lo_a + 1e-9, hi_a - 1e-9)

    def curves(p):
        return [
            r0 + (p[0] - r0) * sigmoid_share(lc, np.exp(p[1 + 2 * k]), p[2 + 2 * k])
            for k, (lc, _, r0) in enumerate(data)
        ]

    def solve(ys, start):
        def resid(p):
            return np.concatenate([c - y for c, y in zip(curves(p), ys)])

        return least_squares(resid, start, bounds=(lo_a, hi_a), method="trf", x_scale="jac").x

    p = solve([d[1] for d in data], p0_a)
    # Block bootstrap of each run's residuals around the joint fit; every replica is refitted jointly.
    rng = np.random.default_rng(seed)  # --seed, as for the runs' own bootstraps
    fitted = curves(p)
    resid = [d[1] - c for d, c in zip(data, fitted)]
    reps = np.array(
        [
            solve([c + (r - r.mean())[_block_indices(rng, len(r), 1)[0]] for c, r in zip(fitted, resid)], p)
            for _ in range(n_boot)
        ]
    )
    tail = 50.0 * (1.0 - level)

    def ci(v):
        return [float(q) for q in np.percentile(v, [tail, 100.0 - tail])]

    return {
        "A": float(p[0]),
        "A_ci": ci(reps[:, 0]),
        "B": {a.name: float(np.exp(p[1])), b.name: float(np.exp(p[3]))},
        "B_ci": {a.name: ci(np.exp(reps[:, 1])), b.name: ci(np.exp(reps[:, 3]))},
        "B_ratio_ci": ci(np.exp(reps[:, 1] - reps[:, 3])),
        "C_mid": {a.name: float(np.exp(p[2])), b.name: float(np.exp(p[4]))},
    }


def _overlap(i1, i2) -> bool:
    return i1[0] <= i2[1] and i2[0] <= i1[1]


def crossovers(a: CurveFit, b: CurveFit, c_max: float) -> list[dict]:
    """Compute values where the two fitted curves cross, between the first fitted point and c_max.

    Each crossing carries an interval from the bootstrap replicas (replica i of one run against replica i of
    the other): the crossing of each replica pair nearest to the fitted one, and the share of pairs that cross.
    """
    c_min = min(a.x[a.used].min(), b.x[b.used].min())
    grid = np.geomspace(c_min, c_max, 2000)
    diff = a.params(grid) - b.params(grid)
    n = min(len(a.boot), len(b.boot))
    rep = a.replica_curves(grid)[:n] - b.replica_curves(grid)[:n]
    flips = np.sign(rep[:, :-1]) * np.sign(rep[:, 1:]) < 0
    tail = 50.0 * (1.0 - a.options.level)
    out = []
    for i in np.flatnonzero(np.sign(diff[:-1]) * np.sign(diff[1:]) < 0):
        c = brentq(lambda v: float(a.params(v) - b.params(v)), grid[i], grid[i + 1])
        ahead = a.name if diff[i + 1] > 0 else b.name
        near = []
        for row in flips:
            idx = np.flatnonzero(row)
            if idx.size:
                near.append(grid[idx[np.argmin(np.abs(idx - i))]])
        ci = [float(v) for v in np.percentile(near, [tail, 100.0 - tail])] if near else [None, None]
        out.append({"compute": float(c), "ahead_after": ahead, "ci": ci, "p_cross": len(near) / n})
    return out


def compare_fits(
    fits: list[CurveFit], a_tol: float = A_TOLERANCE, horizon: float = 1000.0, baseline: str | None = None
) -> dict:
    """Every pair of runs, or with `baseline` (a leave-one-out sweep) each run against the baseline only."""
    runs = [
        {
            "name": f.name,
            "A": f.params.A,
            "B": f.params.B,
            "C_mid": f.params.c_mid,
            "R0": f.params.R0,
            "ci": {k: f.ci(k) for k in ("A", "B", "C_mid")},
            "identified": ceiling_identified(f),
            "warnings": f.warnings,
        }
        for f in fits
    ]
    pairs = []
    c_max = horizon * max(float(f.x.max()) for f in fits)
    if baseline is not None:
        base = next(f for f in fits if f.name == baseline)
        todo = [(base, f) for f in fits if f is not base]
    else:
        todo = list(combinations(fits, 2))
    for a, b in todo:
        pairs.append(compare_pair(a, b, a_tol, c_max))
    return {"runs": runs, "pairs": pairs, "a_tolerance": a_tol}


def compare_pair(a: CurveFit, b: CurveFit, a_tol: float, c_max: float) -> dict:
    ci_a, ci_b = a.ci("A"), b.ci("A")
    within = abs(a.params.A - b.params.A) <= a_tol
    same = within or _overlap(ci_a, ci_b)
    pair = {
        "runs": [a.name, b.name],
        "delta_A": a.params.A - b.params.A,
        "same_ceiling": same,
        "A_intervals_overlap": _overlap(ci_a, ci_b),
        "crossovers": crossovers(a, b, c_max),
    }
    if not same:
        winner = a.name if a.params.A > b.params.A else b.name
        pair["higher_ceiling"] = winner
        pair["significant"] = True
        pair["verdict"] = (
            f"{winner} has the higher ceiling (|dA| = {abs(a.params.A - b.params.A):.3f} > {a_tol:g}, intervals apart)"
        )
        return pair
    shared = shared_a_fit(a, b, a.options.bound, a.options.level, seed=a.options.seed)
    pair["shared_A"] = shared
    why = f"within {a_tol:g}" if within else "A intervals overlap"
    if _overlap(shared["B_ci"][a.name], shared["B_ci"][b.name]):
        pair["more_efficient"] = None
        pair["significant"] = False
        pair["verdict"] = (
            f"no significant difference: same ceiling ({why}) and overlapping B intervals under a shared A"
        )
    else:
        pair["more_efficient"] = max(shared["B"], key=shared["B"].get)
        pair["significant"] = True
        pair["verdict"] = (
            f"same ceiling ({why}); {pair['more_efficient']} is more efficient (higher B with shared A, "
            "B intervals apart)"
        )
    return pair


def ceiling_identified(f: CurveFit) -> bool:
    """The data pin the ceiling: the curve bends inside them (C_mid, B off its limits, no level forecast) and the
    interval of A stays below the bound. Otherwise A is an extrapolation and a ceiling comparison means little."""
    from .fit import shape_identified

    return f.level_forecast is None and shape_identified(f) and f.ci("A")[1] < f.options.bound - 1e-3


def ingredient_verdict(pair: dict, baseline: str, identified: dict[str, bool] | None = None) -> dict:
    """What a leave-one-out pair says about the ingredient the variant drops: "helps" when the baseline (with it)
    has the significantly higher ceiling, or the same ceiling and a significantly higher B; "hurts" the other way
    round; "no significant difference" when the intervals overlap; "not identified" when either curve has not bent
    yet (its A is an extrapolation: run longer), whatever the intervals say."""
    if identified is not None and not all(identified.get(n, True) for n in pair["runs"]):
        return {"effect": "not identified", "basis": None}
    if not pair["significant"]:
        return {"effect": "no significant difference", "basis": None}
    if "higher_ceiling" in pair:
        return {"effect": "helps" if pair["higher_ceiling"] == baseline else "hurts", "basis": "ceiling A"}
    return {"effect": "helps" if pair["more_efficient"] == baseline else "hurts", "basis": "efficiency B"}
