"""The paper's fitting procedure, reproduced as `--method paper` and as the benchmark's baseline.

ScaleRL (arXiv 2510.13786, curve-fitting appendix): grid-search A in {0.450, 0.455, ..., 0.800} and C_mid over 100
values, fit B with scipy.optimize.curve_fit in every cell, keep the fit with the lowest squared error. The published A
grid assumes a pass rate with R0 < 0.45 < A <= 0.8; where a curve falls outside it, the same spacing, 0.005 of the
metric's bound, is used over (R0, bound] instead, so the method stays usable (and no slower per cell).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from .errors import InputError
from .sigmoid_fit import B_RANGE, SigmoidParams

PAPER_A_GRID = np.round(np.arange(0.450, 0.8001, 0.005), 3)


def a_grid(y, R0, bound):
    """The published A grid, as shares of the metric's bound (a pass rate in percent gets 45.0, 45.5, ..., 80.0),
    for a curve inside it; else the same spacing, 0.005 of the bound, over (R0, bound]. At most 200 values whatever
    the bound (a spacing of 0.005 in the metric's own units made 16,000 at bound 100: hours), and never empty: R0
    within one step of the bound keeps the bound."""
    if R0 < PAPER_A_GRID[0] * bound and np.max(y) <= PAPER_A_GRID[-1] * bound:
        return PAPER_A_GRID * bound
    step = 0.005 * bound
    grid = np.arange(R0 + step, bound + 1e-9 * bound, step)
    return grid if len(grid) else np.array([bound])


def fit_sigmoid_paper(x, y, R0: float, bound: float = 1.0, n_cmid: int = 100) -> SigmoidParams:
    x, y = np.asarray(x, float), np.asarray(y, float)
    cmid_grid = np.geomspace(x.min(), x.max() * 10, n_cmid)
    best, best_sse = None, np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        for A in a_grid(y, R0, bound):
            for c_mid in cmid_grid:

                def f(c, B, A=A, c_mid=c_mid):
                    return R0 + (A - R0) / (1.0 + (c_mid / c) ** B)

                try:
                    (B,), _ = curve_fit(f, x, y, p0=[1.0], bounds=B_RANGE)
                except (RuntimeError, ValueError):
                    continue
                sse = float(np.sum((f(x, B) - y) ** 2))
                if sse < best_sse:
                    best, best_sse = SigmoidParams(A=float(A), B=float(B), c_mid=float(c_mid), R0=R0), sse
    if best is None:
        raise InputError(
            f"--method paper: no cell of its grid could be fitted to these {len(x)} points; try the default method"
        )
    return best
