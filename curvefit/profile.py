"""Profile likelihood of the ceiling A: where the data actually constrain it.

For each A on a grid, the best squared error over (B, C_mid) (and R0 when it is free) is found on the fit's
(B, C_mid) grid in closed form, so the whole profile costs one pass over the points. With Gaussian errors the
profile interval is {A : n_eff log(SSE(A) / SSE_min) <= chi2_1(level)}. Points along a run are autocorrelated, so
n_eff = n / L with L the bootstrap's block length: that keeps the profile from claiming the precision of n
independent evaluations. Where the profile stays flat up to the bound, the data say nothing about how high the
ceiling is, whatever the bootstrap says.
"""

from __future__ import annotations

import numpy as np

from .bootstrap import block_length
from .sigmoid_fit import B_GRID, SigmoidParams, cmid_grid, fixed_r0_sse, grid_sums

N_A = 80


def profile_a(x, y, params: SigmoidParams, free_r0: bool, bound: float, level: float) -> dict:
    from scipy.stats import chi2

    log_c, y = np.log(np.asarray(x, float)), np.asarray(y, float)
    # The fit's global grid, plus a fine one around its optimum: near the optimum the profile is a narrow
    # valley that the coarse grid would cut off, far from it the coarse grid finds the other shapes.
    grids = [
        grid_sums(log_c, y, B_GRID, cmid_grid(log_c)),
        grid_sums(log_c, y, params.B * np.geomspace(1 / 3, 3, 41), np.log(params.c_mid) + np.linspace(-2, 2, 61)),
    ]
    a_lo = float(np.min(y)) if free_r0 else params.R0
    near = params.A + (bound - a_lo) * np.linspace(-0.05, 0.05, 41)
    grid = np.unique(np.clip(np.concatenate([np.linspace(a_lo, bound, N_A), near, [params.A]]), a_lo, bound))
    sse = np.array([min(_best_sse(g, y, A, params.R0, free_r0) for g in grids) for A in grid])
    sse = np.maximum(sse, 1e-300)
    n_eff = len(y) / block_length(len(y))
    stat = n_eff * np.log(sse / sse.min())
    inside = grid[stat <= chi2.ppf(level, 1)]
    lo, hi = float(inside.min()), float(inside.max())
    return {
        "interval": [lo, hi],
        "reaches_bound": bool(stat[-1] <= chi2.ppf(level, 1)),
        "n_eff": float(n_eff),
        "grid": grid.tolist(),
        "deviance": stat.tolist(),
    }


def _best_sse(g, y, A, R0, free_r0) -> float:
    if free_r0:
        # y - A s = R0 (1 - s): R0 in closed form per cell, kept in [0, A].
        r0 = np.clip((g.uy - A * g.us) / np.maximum(g.uu, 1e-300), 0.0, A)
        cell = g.yy - 2 * (r0 * g.uy + A * g.sy) + r0 * r0 * g.uu + 2 * r0 * A * g.us + A * A * g.ss
    else:
        cell, _ = fixed_r0_sse(g, y, R0, A - R0)
    return float(np.min(cell))
