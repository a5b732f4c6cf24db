"""Fast least-squares fit of the ScaleRL sigmoid (the default method).

A coarse grid over (B, log C_mid) is evaluated in one vectorised pass: for fixed (B, C_mid) the curve is
linear in its remaining parameters (A - R0, or R0 and A when R0 is free), so those are solved in closed form
per cell. The best cell is then polished by bounded least squares. The grid makes the fit global (no
starting guess to get wrong); the polish makes it exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from .curves import sigmoid_share

B_RANGE = (0.05, 20.0)
B_GRID = np.geomspace(*B_RANGE, 40)
# C_mid may lie well beyond the data (a curve that has not bent yet); the fit flags that case.
CMID_DECADES_BELOW, CMID_DECADES_ABOVE = 2.0, 3.0


@dataclass(frozen=True)
class SigmoidParams:
    A: float
    B: float
    c_mid: float
    R0: float

    def __call__(self, c):
        c = np.asarray(c, dtype=float)
        with np.errstate(divide="ignore"):
            return self.R0 + (self.A - self.R0) * sigmoid_share(np.log(c), self.B, np.log(self.c_mid))


def log_cmid_bounds(log_c):
    return (log_c.min() - CMID_DECADES_BELOW * np.log(10), log_c.max() + CMID_DECADES_ABOVE * np.log(10))


def fit_sigmoid(x, y, R0: float | None, bound: float = 1.0) -> SigmoidParams:
    """Least-squares sigmoid through (x, y), x > 0. R0=None fits R0; otherwise it is held fixed.

    A is kept in [R0, bound] (in [min(y), bound] when R0 is free), B in B_RANGE, C_mid within
    log_cmid_bounds.
    """
    log_c, y = np.log(np.asarray(x, float)), np.asarray(y, float)
    lo_m, hi_m = log_cmid_bounds(log_c)
    m_grid = np.linspace(lo_m, hi_m, 60)
    s = sigmoid_share(log_c[None, None, :], B_GRID[:, None, None], m_grid[None, :, None])
    if R0 is not None:
        gain, sse = _closed_form_fixed_r0(s, y, R0, bound)
        r0_cells = np.full(gain.shape, R0)
    else:
        r0_cells, a_cells, sse = _closed_form_free_r0(s, y, bound)
        gain = a_cells - r0_cells
    i, j = np.unravel_index(np.nanargmin(sse), sse.shape)
    start = _pack(r0_cells[i, j] + gain[i, j], B_GRID[i], m_grid[j], None if R0 is not None else r0_cells[i, j])
    return _polish(start, log_c, y, R0, bound, (lo_m, hi_m))


def _closed_form_fixed_r0(s, y, R0, bound):
    r = y - R0
    sss = (s * s).sum(-1)
    gain = np.clip((s * r).sum(-1) / np.maximum(sss, 1e-300), 0.0, max(bound - R0, 0.0))
    pred = gain[..., None] * s
    return gain, ((r - pred) ** 2).sum(-1)


def _closed_form_free_r0(s, y, bound):
    # y = R0 * (1 - s) + A * s: two-column linear least squares per cell, via the 2x2 normal equations.
    u = 1.0 - s
    suu, sus, sss = (u * u).sum(-1), (u * s).sum(-1), (s * s).sum(-1)
    suy, ssy = (u * y).sum(-1), (s * y).sum(-1)
    det = suu * sss - sus * sus
    det = np.where(np.abs(det) < 1e-300, np.nan, det)
    r0 = np.clip((sss * suy - sus * ssy) / det, 0.0, bound)
    a = np.clip((suu * ssy - sus * suy) / det, 0.0, bound)
    pred = r0[..., None] * u + a[..., None] * s
    return r0, a, ((y - pred) ** 2).sum(-1)


def _pack(A, B, m, R0):
    p = [A, np.log(B), m]
    return np.array(p if R0 is None else p + [R0], float)


def _polish(p0, log_c, y, R0, bound, m_bounds):
    free_r0 = R0 is None
    lo = [0.0 if free_r0 else R0, np.log(B_RANGE[0]), m_bounds[0]] + ([0.0] if free_r0 else [])
    hi = [bound, np.log(B_RANGE[1]), m_bounds[1]] + ([bound] if free_r0 else [])
    lo, hi = np.array(lo), np.array(hi)
    hi = np.maximum(hi, lo + 1e-12)
    p0 = np.clip(p0, lo, hi)

    def resid(p):
        r0 = p[3] if free_r0 else R0
        return r0 + (p[0] - r0) * sigmoid_share(log_c, np.exp(p[1]), p[2]) - y

    sol = least_squares(resid, p0, bounds=(lo, hi), method="trf", x_scale="jac", xtol=1e-12, ftol=1e-12)
    p = sol.x if 0.5 * np.sum(resid(sol.x) ** 2) <= 0.5 * np.sum(resid(p0) ** 2) else p0
    return SigmoidParams(
        A=float(p[0]), B=float(np.exp(p[1])), c_mid=float(np.exp(p[2])), R0=float(p[3] if free_r0 else R0)
    )
