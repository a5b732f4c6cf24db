"""Levenberg-Marquardt for many sigmoid fits at once (the bootstrap's refits).

Every replica is a separate least-squares problem of 3 or 4 parameters; stacking them turns 1,000 small
scipy calls into a few dozen numpy array passes. Replicas start from the full-data optimum, so a handful of
damped Gauss-Newton steps converge. Parameters are p = [A, log B, log C_mid, (R0)].
"""
from __future__ import annotations

import numpy as np

from .curves import sigmoid_share


def _model(p, log_c, R0):
    r0 = p[:, 3:4] if R0 is None else R0
    A, B, m = p[:, 0:1], np.exp(p[:, 1:2]), p[:, 2:3]
    s = sigmoid_share(log_c, B, m)
    return r0 + (A - r0) * s, s, A - r0, B, m


def _residual_and_jacobian(p, log_c, y, sw, R0):
    f, s, gain, B, m = _model(p, log_c, R0)
    ds = -s * (1.0 - s)  # d s / d z, with z = B (m - log_c)
    cols = [s, gain * ds * B * (m - log_c), gain * ds * B]
    if R0 is None:
        cols.append(1.0 - s)
    J = np.stack(cols, axis=-1) * sw[..., None]
    return (f - y) * sw, J


def batched_lm(p0, log_c, y, weights, R0, lo, hi, max_iter=40, tol=1e-10):
    """Minimise sum_i w_i (f(p; log_c_i) - y_i)^2 for every row of y; returns params of shape (R, P).

    log_c: (N,) shared, or (R, N) per replica. weights: (R, N) of 0/1 marks padding in ragged replicas.
    R0: a fixed float, or None to fit it as a 4th parameter. lo/hi: per-parameter bounds (projected).
    """
    R = y.shape[0]
    p = np.broadcast_to(np.asarray(p0, float), (R, len(p0))).copy()
    sw = np.sqrt(weights)
    shared_x = log_c.ndim == 1
    lam = np.full(R, 1e-3)
    r, J = _residual_and_jacobian(p, log_c, y, sw, R0)
    cost = np.einsum("rn,rn->r", r, r)
    eye = np.eye(p.shape[1])
    active = np.arange(R)
    for _ in range(max_iter):
        a = active
        JT = np.swapaxes(J, 1, 2)
        JTJ = JT @ J
        g = (JT @ r[..., None])[..., 0]
        damp = lam[a, None, None] * (JTJ * eye + 1e-12 * eye)
        p_new = np.clip(p[a] + np.linalg.solve(JTJ + damp, -g[..., None])[..., 0], lo, hi)
        xa = log_c if shared_x else log_c[a]
        r_new, J_new = _residual_and_jacobian(p_new, xa, y[a], sw[a], R0)
        cost_new = np.einsum("rn,rn->r", r_new, r_new)
        better = cost_new < cost[a]
        rel = np.where(better, (cost[a] - cost_new) / np.maximum(cost[a], 1e-300), 0.0)
        p[a[better]] = p_new[better]
        cost[a[better]] = cost_new[better]
        r[better], J[better] = r_new[better], J_new[better]
        lam[a] = np.where(better, lam[a] / 3.0, lam[a] * 4.0)
        # Done: an accepted step that barely helped, or damping so large that no step helps.
        done = (better & (rel < tol)) | (lam[a] > 1e8)
        keep = ~done
        active, r, J = a[keep], r[keep], J[keep]
        if active.size == 0:
            break
    return p
