"""Fit of the power law R(C) = A - D / C^B, kept beside the sigmoid for contrast.

A power law never bends, so fitted early on a saturating curve it puts the ceiling A too high (on the paper's
100k GPU-hour run: A = 1.0 where the data saturate near 0.65). For fixed B the law is linear in (A, D), so B is
grid-searched with (A, D) in closed form, then polished under the bounds A <= bound, D >= 0, B > 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

B_GRID = np.geomspace(1e-3, 5.0, 120)


@dataclass(frozen=True)
class PowerLawParams:
    A: float
    D: float
    B: float

    def __call__(self, c):
        return self.A - self.D * np.asarray(c, float) ** (-self.B)


def fit_power_law(x, y, bound: float = 1.0) -> PowerLawParams:
    log_c, y = np.log(np.asarray(x, float)), np.asarray(y, float)
    # Work with u = (C / C_ref)^-B so D stays of order one whatever the compute units.
    ref = np.exp(log_c.mean())
    u = np.exp(-B_GRID[:, None] * (log_c[None, :] - np.log(ref)))
    ubar, ybar = u.mean(1, keepdims=True), y.mean()
    cov = ((u - ubar) * (y - ybar)).sum(1)
    var = ((u - ubar) ** 2).sum(1)
    d = np.clip(-cov / np.maximum(var, 1e-300), 0.0, None)
    a = np.minimum(ybar + d * ubar[:, 0], bound)
    sse = ((a[:, None] - d[:, None] * u - y) ** 2).sum(1)
    k = int(np.argmin(sse))

    def resid(p):
        return p[0] - p[1] * np.exp(-np.exp(p[2]) * (log_c - np.log(ref))) - y

    lo, hi = [-np.inf, 0.0, np.log(1e-4)], [bound, np.inf, np.log(20.0)]
    p0 = np.clip([a[k], d[k], np.log(B_GRID[k])], np.array(lo) + 1e-12, np.array(hi) - 1e-12)
    p = least_squares(resid, p0, bounds=(lo, hi), method="trf", x_scale="jac").x
    B = float(np.exp(p[2]))
    return PowerLawParams(A=float(p[0]), D=float(p[1] * ref**B), B=B)
