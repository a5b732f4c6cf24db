"""Curve-fit speed and accuracy: the default method against the paper's grid + curve_fit, in one run.

Run: python bench/bench_fit.py   (pins BLAS to one thread: the claim is "on one core")
"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import time  # noqa: E402

import numpy as np  # noqa: E402

from scalerl.curvefit.bootstrap import bootstrap_sigmoid  # noqa: E402
from scalerl.curvefit.curves import sigmoid  # noqa: E402
from scalerl.curvefit.paper_method import PAPER_A_GRID, a_grid, fit_sigmoid_paper  # noqa: E402
from scalerl.curvefit.sigmoid_fit import fit_sigmoid  # noqa: E402

TRUE = dict(A=0.61, B=1.5, c_mid=3000.0, R0=0.2)


def curve(n, seed):
    rng = np.random.default_rng(seed)
    x = np.linspace(1500, 50000, n)
    return x, sigmoid(x, TRUE["A"], TRUE["B"], TRUE["c_mid"], TRUE["R0"]) + rng.normal(0, 0.01, n)


def timed(fn, repeat=1):
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main():
    x, y = curve(1000, 0)
    t_fast, p_fast = timed(lambda: fit_sigmoid(x, y, TRUE["R0"]), repeat=5)
    t_boot, _ = timed(lambda: bootstrap_sigmoid(x, y, None, p_fast, False, 1.0, 1000), repeat=3)
    t_paper, p_paper = timed(lambda: fit_sigmoid_paper(x, y, TRUE["R0"]))
    sse = lambda p: float(np.sum((p(x) - y) ** 2))  # noqa: E731
    print("1,000-point curve, true A=0.61 B=1.5 C_mid=3000, noise 0.01, one BLAS thread")
    print(f"{'method':34s} {'seconds':>9s} {'vs paper':>9s} {'SSE':>10s} {'|A err|':>8s} {'|B err|':>8s}")
    print(
        f"{'paper: A x C_mid grid + curve_fit':34s} {t_paper:9.3f} {1.0:9.2f} {sse(p_paper):10.5f} "
        f"{abs(p_paper.A - 0.61):8.4f} {abs(p_paper.B - 1.5):8.4f}"
    )
    print(
        f"{'fast: grid + closed-form A + polish':34s} {t_fast:9.3f} {t_fast / t_paper:9.4f} {sse(p_fast):10.5f} "
        f"{abs(p_fast.A - 0.61):8.4f} {abs(p_fast.B - 1.5):8.4f}"
    )
    print(f"{'fast fit + 1,000 bootstrap refits':34s} {t_fast + t_boot:9.3f} {(t_fast + t_boot) / t_paper:9.4f}")
    print(
        f"speed-up of one fit: {t_paper / t_fast:.0f}x; "
        f"the paper method would need ~{t_paper * 1000 / 3600:.1f} h for 1,000 refits"
    )

    # The same curve in percent (--bound 100): the paper's A grid as shares of the bound costs what the pass rate's
    # does. Before, the grid stepped 0.005 in the metric's own units: 16,000 A values at bound 100.
    r0 = 100 * TRUE["R0"]
    t_pct, p_pct = timed(lambda: fit_sigmoid_paper(x, 100 * y, r0, bound=100.0))
    old = len(np.arange(r0 + 0.005, 100 + 1e-9, 0.005))
    print(
        f"paper method in percent (--bound 100): {t_pct:.3f} s, {t_pct / t_paper:.2f} x the pass rate's, A = "
        f"{p_pct.A:.2f}; A grid {len(a_grid(100 * y, r0, 100.0))} values (before: {old}, about "
        f"{old / len(PAPER_A_GRID) * t_paper / 60:.0f} min)"
    )

    # Accuracy over many curves: does the fast method ever lose to the paper's grid?
    wins = 0
    for seed in range(1, 6):
        xs, ys = curve(200, seed)
        f, p = fit_sigmoid(xs, ys, TRUE["R0"]), fit_sigmoid_paper(xs, ys, TRUE["R0"])
        wins += np.sum((f(xs) - ys) ** 2) <= np.sum((p(xs) - ys) ** 2) * (1 + 1e-9)
    print(f"fast SSE <= paper SSE on {wins}/5 further 200-point curves")


if __name__ == "__main__":
    main()
