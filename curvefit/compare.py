"""Compare fitted runs the paper's way.

ScaleRL compares recipes by their ceiling A first; when two ceilings lie within the uncertainty of A
(the paper uses 0.02), the runs are refitted with one shared A and compared by B (efficiency: higher B
reaches the ceiling with less compute). Where two curves cross, the compute at the crossing says from
which budget on the other recipe is ahead.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from scipy.optimize import brentq, least_squares

from .curves import sigmoid_share
from .fit import CurveFit
from .sigmoid_fit import B_RANGE, log_cmid_bounds

A_TOLERANCE = 0.02


def shared_a_fit(a: CurveFit, b: CurveFit, bound: float) -> dict:
    """Refit two runs with one ceiling A and their own B, C_mid (R0 held at each run's value)."""
    data = [(np.log(f.x[f.used]), f.y[f.used], f.params.R0) for f in (a, b)]
    all_logc = np.concatenate([d[0] for d in data])
    lo_m, hi_m = log_cmid_bounds(all_logc)

    def resid(p):
        out = []
        for k, (lc, y, r0) in enumerate(data):
            B, m = np.exp(p[1 + 2 * k]), p[2 + 2 * k]
            out.append(r0 + (p[0] - r0) * sigmoid_share(lc, B, m) - y)
        return np.concatenate(out)

    p0 = [0.5 * (a.params.A + b.params.A)]
    lo, hi = [max(a.params.R0, b.params.R0)], [bound]
    for f in (a, b):
        p0 += [np.log(f.params.B), np.log(f.params.c_mid)]
        lo += [np.log(B_RANGE[0]), lo_m]
        hi += [np.log(B_RANGE[1]), hi_m]
    p0 = np.clip(p0, np.array(lo) + 1e-9, np.array(hi) - 1e-9)
    p = least_squares(resid, p0, bounds=(lo, hi), method="trf", x_scale="jac").x
    return {
        "A": float(p[0]),
        "B": {a.name: float(np.exp(p[1])), b.name: float(np.exp(p[3]))},
        "C_mid": {a.name: float(np.exp(p[2])), b.name: float(np.exp(p[4]))},
    }


def crossovers(a: CurveFit, b: CurveFit, c_max: float) -> list[dict]:
    """Compute values where the two fitted curves cross, between the first fitted point and c_max."""
    c_min = min(a.x[a.used].min(), b.x[b.used].min())
    grid = np.geomspace(c_min, c_max, 2000)
    diff = a.params(grid) - b.params(grid)
    out = []
    for i in np.flatnonzero(np.sign(diff[:-1]) * np.sign(diff[1:]) < 0):
        c = brentq(lambda v: float(a.params(v) - b.params(v)), grid[i], grid[i + 1])
        ahead = a.name if diff[i + 1] > 0 else b.name
        out.append({"compute": float(c), "ahead_after": ahead})
    return out


def compare_fits(fits: list[CurveFit], a_tol: float = A_TOLERANCE, horizon: float = 1000.0) -> dict:
    runs = [
        {
            "name": f.name,
            "A": f.params.A,
            "B": f.params.B,
            "C_mid": f.params.c_mid,
            "R0": f.params.R0,
            "ci": {k: f.ci(k) for k in ("A", "B", "C_mid")},
            "warnings": f.warnings,
        }
        for f in fits
    ]
    pairs = []
    c_max = horizon * max(float(f.x.max()) for f in fits)
    for a, b in combinations(fits, 2):
        same = abs(a.params.A - b.params.A) <= a_tol
        pair = {
            "runs": [a.name, b.name],
            "delta_A": a.params.A - b.params.A,
            "same_ceiling": same,
            "crossovers": crossovers(a, b, c_max),
        }
        if same:
            shared = shared_a_fit(a, b, a.options.bound)
            pair["shared_A"] = shared
            pair["more_efficient"] = max(shared["B"], key=shared["B"].get)
            pair["verdict"] = (
                f"same ceiling within {a_tol:g}; {pair['more_efficient']} is more efficient (higher B with shared A)"
            )
        else:
            winner = a.name if a.params.A > b.params.A else b.name
            pair["higher_ceiling"] = winner
            pair["verdict"] = f"{winner} has the higher ceiling (|dA| = {abs(pair['delta_A']):.3f} > {a_tol:g})"
        pairs.append(pair)
    return {"runs": runs, "pairs": pairs, "a_tolerance": a_tol}
