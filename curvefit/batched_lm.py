"""Levenberg-Marquardt for many sigmoid fits at once (the bootstrap's refits).

Every replica is a separate least-squares problem of 3 or 4 parameters; stacking them turns 1,000 small
scipy calls into a few dozen numpy array passes. Replicas start from the full-data optimum, so a handful of
damped Gauss-Newton steps converge. Parameters are p = [A, log B, log C_mid, (R0)].

The normal equations are built from the Jacobian's columns pairwise (never materialising the (R, N, P)
Jacobian), and the Jacobian is only recomputed for replicas whose step was accepted: that keeps 1,000 refits
of a 1,000-point curve to a fraction of a second on one core.
"""

from __future__ import annotations

import numpy as np

from .curves import sigmoid_share


def _residual(p, log_c, y, sw, R0):
    r0 = p[:, 3:4] if R0 is None else R0
    s = sigmoid_share(log_c, np.exp(p[:, 1:2]), p[:, 2:3])
    return (r0 + (p[:, 0:1] - r0) * s - y) * sw, s


def _columns(p, log_c, s, sw, R0):
    """Weighted Jacobian columns d f / d p_k, each of shape (R, N)."""
    r0 = p[:, 3:4] if R0 is None else R0
    B, m = np.exp(p[:, 1:2]), p[:, 2:3]
    common = (p[:, 0:1] - r0) * (-s * (1.0 - s)) * B * sw  # d f/d z * B, with z = B (m - log_c)
    cols = [s * sw, common * (m - log_c), common]
    if R0 is None:
        cols.append((1.0 - s) * sw)
    return cols


def _normal_equations(cols, r):
    P = len(cols)
    JTJ = np.empty((r.shape[0], P, P))
    g = np.empty((r.shape[0], P))
    for i in range(P):
        g[:, i] = np.einsum("rn,rn->r", cols[i], r)
        for j in range(i, P):
            JTJ[:, i, j] = JTJ[:, j, i] = np.einsum("rn,rn->r", cols[i], cols[j])
    return JTJ, g


def batched_lm(p0, log_c, y, weights, R0, lo, hi, max_iter=40, tol=1e-10):
    """Minimise sum_i w_i (f(p; log_c_i) - y_i)^2 for every row of y; returns params of shape (R, P).

    log_c: (N,) shared, or (R, N) per replica. weights: (R, N) of 0/1 marks padding in ragged replicas.
    R0: a fixed float, or None to fit it as a 4th parameter. lo/hi: per-parameter bounds (projected).
    """
    R = y.shape[0]
    p = np.broadcast_to(np.asarray(p0, float), (R, len(p0))).copy()
    sw = np.sqrt(weights)
    shared_x = log_c.ndim == 1
    r, s = _residual(p, log_c, y, sw, R0)
    cost = np.einsum("rn,rn->r", r, r)
    JTJ, g = _normal_equations(_columns(p, log_c, s, sw, R0), r)
    lam = np.full(R, 1e-3)
    eye = np.eye(p.shape[1])
    active = np.arange(R)
    for _ in range(max_iter):
        a = active
        xa = log_c if shared_x else log_c[a]
        damp = lam[a, None, None] * (JTJ * eye + 1e-12 * eye)
        p_new = np.clip(p[a] + np.linalg.solve(JTJ + damp, -g[..., None])[..., 0], lo, hi)
        r_new, s_new = _residual(p_new, xa, y[a], sw[a], R0)
        cost_new = np.einsum("rn,rn->r", r_new, r_new)
        better = cost_new < cost[a]
        rel = np.where(better, (cost[a] - cost_new) / np.maximum(cost[a], 1e-300), 0.0)
        p[a[better]], cost[a[better]] = p_new[better], cost_new[better]
        lam[a] = np.where(better, lam[a] / 3.0, lam[a] * 4.0)
        # Done: an accepted step that barely helped, or damping so large that no step helps.
        done = (better & (rel < tol)) | (lam[a] > 1e8)
        refresh = better & ~done
        if refresh.any():
            xr = log_c if shared_x else log_c[a[refresh]]
            cols = _columns(p_new[refresh], xr, s_new[refresh], sw[a[refresh]], R0)
            JTJ[refresh], g[refresh] = _normal_equations(cols, r_new[refresh])
        keep = ~done
        active, JTJ, g = a[keep], JTJ[keep], g[keep]
        if active.size == 0:
            break
    return p
