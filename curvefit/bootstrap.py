"""Uncertainty by moving-block residual bootstrap.

Points along one training curve are autocorrelated (each evaluation follows from the last policy), so
resampling points one by one would understate the uncertainty. Instead, residuals from the fitted curve are
resampled in contiguous blocks, added back onto the fitted curve at the same compute values, and every
replica is refitted (batched_lm). With several seeds of one recipe (--group), each replica first draws the
seeds with replacement, so seed-to-seed spread widens the intervals too.
"""

from __future__ import annotations

import numpy as np

from .batched_lm import batched_lm
from .sigmoid_fit import B_RANGE, SigmoidParams, log_cmid_bounds


def block_length(n: int) -> int:
    # n^(1/3) is the standard order for moving-block bootstrap of smooth statistics.
    return max(2, int(round(n ** (1.0 / 3.0))))


def _block_indices(rng, n, n_boot):
    L = min(block_length(n), n)
    n_blocks = -(-n // L)
    starts = rng.integers(0, n - L + 1, size=(n_boot, n_blocks))
    return (starts[:, :, None] + np.arange(L)).reshape(n_boot, -1)[:, :n]


def bootstrap_sigmoid(
    x, y, groups, fit: SigmoidParams, free_r0: bool, bound: float, n_boot: int, seed: int = 0, w=None
):
    """Refit n_boot bootstrap replicas; returns (params (n_boot, 4) as [A, B, C_mid, R0], residuals).

    groups: an int label per point (which seed it came from), or None for a single curve.
    w: per-point weights (inverse noise variance) of a single curve, or None. Weighted, the residuals are
    resampled on the standardised scale r sqrt(w) and put back at the noise level of the point they land on.
    """
    rng = np.random.default_rng(seed)
    x, y = np.asarray(x, float), np.asarray(y, float)
    resid = y - fit(x)
    if groups is None:
        idx = _block_indices(rng, len(x), n_boot)
        sw = np.ones_like(x) if w is None else np.sqrt(np.asarray(w, float))
        std = resid * sw
        centred = std - std.mean()
        log_c = np.log(x)
        Y = fit(x)[None, :] + centred[idx] / sw[None, :]
        W = np.broadcast_to(sw**2, Y.shape).copy()
    else:
        log_c, Y, W = _grouped_replicas(rng, x, resid, np.asarray(groups), fit, n_boot)
    lo_m, hi_m = log_cmid_bounds(np.log(x))
    lo = [fit.R0 if not free_r0 else 0.0, np.log(B_RANGE[0]), lo_m] + ([0.0] if free_r0 else [])
    hi = [bound, np.log(B_RANGE[1]), hi_m] + ([bound] if free_r0 else [])
    p0 = [fit.A, np.log(fit.B), np.log(fit.c_mid)] + ([fit.R0] if free_r0 else [])
    p = batched_lm(np.array(p0), log_c, Y, W, None if free_r0 else fit.R0, np.array(lo), np.array(hi))
    r0 = p[:, 3] if free_r0 else np.full(n_boot, fit.R0)
    return np.column_stack([p[:, 0], np.exp(p[:, 1]), np.exp(p[:, 2]), r0]), resid


def _grouped_replicas(rng, x, resid, groups, fit, n_boot):
    labels = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in labels]
    # Seeds are drawn with replacement: the longest one can fill every slot.
    n_max = len(labels) * max(len(m) for m in members)
    log_c = np.zeros((n_boot, n_max))
    Y = np.zeros((n_boot, n_max))
    W = np.zeros((n_boot, n_max))
    for b in range(n_boot):
        pos = 0
        for k in rng.integers(0, len(labels), size=len(labels)):
            m = members[k]
            # A seed's residuals keep their mean: that offset is the seed-to-seed spread.
            blocks = m[_block_indices(rng, len(m), 1)[0]]
            n = len(m)
            log_c[b, pos : pos + n] = np.log(x[m])
            Y[b, pos : pos + n] = fit(x[m]) + resid[blocks]
            W[b, pos : pos + n] = 1.0
            pos += n
        log_c[b, pos:] = np.log(x[0])  # padding: weight 0, any finite value
    return log_c, Y, W
