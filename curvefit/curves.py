"""The two curve forms, as pure vectorised functions.

Sigmoid (ScaleRL Eq. 1, arXiv 2510.13786):  R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B)
Power law (for contrast):                    R(C) = A - D / C^B
"""

from __future__ import annotations

import numpy as np


def sigmoid_share(log_c, B, log_cmid):
    """Fraction of the gain (A - R0) realised at compute exp(log_c): 1 / (1 + (C_mid/C)^B).

    Written in log space so that extreme C and C_mid neither overflow nor divide by zero.
    """
    z = np.clip(B * (log_cmid - log_c), -700.0, 700.0)
    return 1.0 / (1.0 + np.exp(z))


def sigmoid(c, A, B, c_mid, R0):
    """Eq. 1. At C -> 0 it returns R0, at C -> inf it returns A, and at C = C_mid it is halfway."""
    c = np.asarray(c, dtype=float)
    with np.errstate(divide="ignore"):
        log_c = np.log(c)
    return R0 + (A - R0) * sigmoid_share(log_c, B, np.log(c_mid))


def sigmoid_inverse(r, A, B, c_mid, R0):
    """Compute at which the sigmoid reaches r: 0 at or below R0, inf at or beyond the ceiling A.

    Solves r = R0 + (A - R0) / (1 + (C_mid/C)^B) for C:  C = C_mid * (1/frac - 1)^(-1/B),
    with frac = (r - R0) / (A - R0) the share of the gain that r represents.
    """
    r = np.asarray(r, dtype=float)
    gain = A - R0
    frac = (r - R0) / gain if gain != 0 else np.full_like(r, np.inf)
    inside = (frac > 0) & (frac < 1)
    safe = np.where(inside, frac, 0.5)
    c = c_mid * (1.0 / safe - 1.0) ** (-1.0 / B)
    return np.where(inside, c, np.where(frac <= 0, 0.0, np.inf))


def power_law(c, A, D, B):
    """A - D / C^B: rises without bend, so an early fit tends to overshoot the ceiling."""
    c = np.asarray(c, dtype=float)
    return A - D * c ** (-B)
