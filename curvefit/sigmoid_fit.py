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
from .thin import bin_points

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


GRID_POINTS = 2000  # the grid search runs on at most this many bins; the polish uses every point
GRID_CHUNK = 2048  # points per pass over the (B, C_mid) grid: memory stays ~40 MB whatever the curve length


@dataclass(frozen=True)
class GridSums:
    """Per (B, C_mid) cell, the sums that the closed-form solutions need; s is the sigmoid share, u = 1 - s."""

    ss: np.ndarray
    sy: np.ndarray
    uu: np.ndarray
    us: np.ndarray
    uy: np.ndarray
    yy: float
    sw: float = float("nan")  # sum of the weights (the point count when unweighted)
    swy: float = float("nan")  # weighted sum of y


def grid_sums(log_c, y, b_grid, m_grid, w=None) -> GridSums:
    """Sums over the points, each weighted by w (None: all 1)."""
    # Accumulated over chunks of points so that a million-point curve never materialises (B, C_mid, n).
    w = np.ones(len(y)) if w is None else np.asarray(w, float)
    acc = np.zeros((5, len(b_grid), len(m_grid)))
    for i in range(0, len(log_c), GRID_CHUNK):
        lc, yc, wc = log_c[i : i + GRID_CHUNK], y[i : i + GRID_CHUNK], w[i : i + GRID_CHUNK]
        s = sigmoid_share(lc[None, None, :], b_grid[:, None, None], m_grid[None, :, None])
        u = 1.0 - s
        sw, uw = s * wc, u * wc
        acc += np.stack([(sw * s).sum(-1), s @ (wc * yc), (uw * u).sum(-1), (uw * s).sum(-1), u @ (wc * yc)])
    ss, sy, uu, us, uy = acc
    return GridSums(ss, sy, uu, us, uy, yy=float(y @ (w * y)), sw=float(w.sum()), swy=float(w @ y))


def cmid_grid(log_c):
    lo_m, hi_m = log_cmid_bounds(log_c)
    return np.linspace(lo_m, hi_m, 60)


def fit_sigmoid(x, y, R0: float | None, bound: float = 1.0, w=None, prior=None) -> SigmoidParams:
    """Least-squares sigmoid through (x, y), x > 0. R0=None fits R0; otherwise it is held fixed.

    A is kept in [R0, bound] (in [min(y), bound] when R0 is free), B in B_RANGE, C_mid within
    log_cmid_bounds. w: per-point weights (the inverse noise variance), or None for ordinary least squares.
    prior: a priors.ShapePrior on log B and the headroom, or None; it is applied in a second polish, with the data
    residuals scaled by the first polish's noise estimate.
    """
    log_c, y = np.log(np.asarray(x, float)), np.asarray(y, float)
    m_grid = cmid_grid(log_c)
    # The grid only has to find the basin; on a long curve, bins of consecutive points find the same one.
    xb, yb = bin_points(x, y, GRID_POINTS)
    wb = None
    if w is not None:
        w = np.asarray(w, float)
        wb = w if len(xb) == len(x) else bin_points(x, w, GRID_POINTS)[1]
    g = grid_sums(np.log(xb), yb, B_GRID, m_grid, wb)
    if R0 is not None:
        gain, sse = _closed_form_fixed_r0(g, yb, R0, bound)
        r0_cells = np.full(gain.shape, R0)
    else:
        r0_cells, a_cells, sse = _closed_form_free_r0(g, bound)
        gain = a_cells - r0_cells
    i, j = np.unravel_index(np.nanargmin(sse), sse.shape)
    start = _pack(r0_cells[i, j] + gain[i, j], B_GRID[i], m_grid[j], None if R0 is not None else r0_cells[i, j])
    sqrt_w = None if w is None else np.sqrt(w)
    fit = _polish(start, log_c, y, R0, bound, log_cmid_bounds(log_c), sqrt_w)
    if prior is None or len(y) < 5:
        return fit
    r = fit(np.exp(log_c)) - y
    if sqrt_w is not None:
        r = r * sqrt_w
    n_free = 3 if R0 is not None else 4
    # Points along a run are autocorrelated: the data carry about n / L independent residuals, not n.
    s2 = float(np.sum(r**2) / max(len(y) - n_free, 1)) * max(2, round(len(y) ** (1.0 / 3.0)))
    start = _pack(fit.A, fit.B, np.log(fit.c_mid), None if R0 is not None else fit.R0)
    return _polish(start, log_c, y, R0, bound, log_cmid_bounds(log_c), sqrt_w, (prior, np.sqrt(max(s2, 1e-12))))


def fixed_r0_sse(g: GridSums, y, R0, gain):
    """Squared error per cell of R0 + gain * s, expanded in the grid sums (gain: scalar or per cell)."""
    sum_s = g.us + g.ss  # u + s = 1, so sum s = sum s (u + s)
    sw = len(y) if np.isnan(g.sw) else g.sw
    swy = float(np.sum(y)) if np.isnan(g.swy) else g.swy
    sum_r2 = g.yy - 2 * R0 * swy + R0 * R0 * sw
    sum_rs = g.sy - R0 * sum_s
    return sum_r2 - 2 * gain * sum_rs + gain * gain * g.ss, sum_rs


def _closed_form_fixed_r0(g: GridSums, yb, R0, bound):
    _, sum_rs = fixed_r0_sse(g, yb, R0, 0.0)
    gain = np.clip(sum_rs / np.maximum(g.ss, 1e-300), 0.0, max(bound - R0, 0.0))
    sse, _ = fixed_r0_sse(g, yb, R0, gain)
    return gain, sse


def _closed_form_free_r0(g: GridSums, bound):
    # y = R0 * (1 - s) + A * s: two-column linear least squares per cell, via the 2x2 normal equations.
    det = g.uu * g.ss - g.us * g.us
    det = np.where(np.abs(det) < 1e-300, np.nan, det)
    r0 = np.clip((g.ss * g.uy - g.us * g.sy) / det, 0.0, bound)
    a = np.clip((g.uu * g.sy - g.us * g.uy) / det, 0.0, bound)
    sse = g.yy - 2 * (r0 * g.uy + a * g.sy) + r0 * r0 * g.uu + 2 * r0 * a * g.us + a * a * g.ss
    return r0, a, sse


def _pack(A, B, m, R0):
    p = [A, np.log(B), m]
    return np.array(p if R0 is None else p + [R0], float)


def _polish(p0, log_c, y, R0, bound, m_bounds, sqrt_w=None, prior=None):
    free_r0 = R0 is None
    lo = np.array([0.0 if free_r0 else R0, np.log(B_RANGE[0]), m_bounds[0]] + ([0.0] if free_r0 else []))
    hi = np.array([bound, np.log(B_RANGE[1]), m_bounds[1]] + ([bound] if free_r0 else []))
    hi = np.maximum(hi, lo + 1e-12)
    p0 = np.clip(p0, lo, hi)

    def resid(p):
        r0 = p[3] if free_r0 else R0
        r = r0 + (p[0] - r0) * sigmoid_share(log_c, np.exp(p[1]), p[2]) - y
        r = r if sqrt_w is None else r * sqrt_w
        if prior is None:
            return r
        pr, sigma = prior
        h = (p[0] - r0) / max(bound - r0, 1e-9)
        extra = [(p[1] - pr.log_b[0]) / pr.log_b[1], (h - pr.headroom[0]) / pr.headroom[1]]
        return np.concatenate([r / sigma, extra])

    sol = least_squares(resid, p0, bounds=(lo, hi), method="trf", x_scale="jac", xtol=1e-12, ftol=1e-12)
    p = sol.x if np.sum(resid(sol.x) ** 2) <= np.sum(resid(p0) ** 2) else p0
    return SigmoidParams(
        A=float(p[0]), B=float(np.exp(p[1])), c_mid=float(np.exp(p[2])), R0=float(p[3] if free_r0 else R0)
    )
