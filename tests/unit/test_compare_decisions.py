"""compare must pick the truly better recipe, say "no significant difference" for seeds of one recipe, and put
crossovers where the true curves cross."""

import numpy as np
import pytest
from scipy.optimize import brentq

from scalerl.curvefit.compare import compare_fits, crossovers
from scalerl.curvefit.curves import sigmoid
from scalerl.curvefit.data import clean_curve
from scalerl.curvefit.errors import InputError
from scalerl.curvefit.fit import FitOptions, fit_curves
from scalerl.curvefit.groups import group_curves


def run(name, seed, A, B, c_mid, R0=0.2, noise=0.01, n=160, x_max=40000.0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([[0.0], np.linspace(x_max / n, x_max, n)])
    y = sigmoid(x, A, B, c_mid, R0) + rng.normal(0, noise, len(x))
    y[0] = R0
    return clean_curve(name, x, y, "gpu_hours", "pass_rate")


def fits(*curves):
    return [fit_curves([c], FitOptions(n_boot=200)) for c in curves]


def test_compare_picks_the_truly_more_efficient_run():
    # Same ceiling, B 2.5 against 1.0: the steeper run reaches the ceiling with less compute.
    slow, fast = run("slow", 1, 0.62, 1.0, 3000.0), run("fast", 2, 0.62, 2.5, 3000.0)
    (pair,) = compare_fits(fits(slow, fast))["pairs"]
    assert pair["same_ceiling"] and pair["significant"]
    assert pair["more_efficient"] == "fast"
    lo_fast, _ = pair["shared_A"]["B_ci"]["fast"]
    _, hi_slow = pair["shared_A"]["B_ci"]["slow"]
    assert lo_fast > hi_slow
    assert "fast is more efficient" in pair["verdict"]


def test_two_seeds_of_one_recipe_are_no_significant_difference():
    a, b = run("seed0", 11, 0.62, 1.5, 3000.0), run("seed1", 12, 0.62, 1.5, 3000.0)
    (pair,) = compare_fits(fits(a, b))["pairs"]
    assert pair["same_ceiling"] and not pair["significant"]
    assert pair["more_efficient"] is None and "no significant difference" in pair["verdict"]


def test_higher_ceiling_wins_when_intervals_are_apart():
    low, high = run("low", 3, 0.55, 1.5, 3000.0), run("high", 4, 0.70, 1.5, 3000.0)
    (pair,) = compare_fits(fits(low, high))["pairs"]
    assert not pair["same_ceiling"] and pair["higher_ceiling"] == "high" and pair["significant"]


def test_crossover_at_a_known_compute():
    # An efficient recipe with a low ceiling against a slow one with a high ceiling: they cross once.
    ta, tb = (0.60, 3.0, 1500.0, 0.2), (0.75, 1.0, 6000.0, 0.2)
    truth = brentq(lambda c: float(sigmoid(c, *ta) - sigmoid(c, *tb)), 2000.0, 1e6)
    a, b = fits(run("efficient", 5, *ta, noise=0.005), run("scalable", 6, *tb, noise=0.005))
    (cross,) = crossovers(a, b, 1e6)
    assert cross["compute"] == pytest.approx(truth, rel=0.15)
    assert cross["ahead_after"] == "scalable"
    lo, hi = cross["ci"]
    assert lo <= truth <= hi and cross["p_cross"] > 0.9
    # No crossing where one curve stays above the other.
    hi_run, lo_run = fits(run("hi", 7, 0.7, 1.5, 3000.0), run("lo", 8, 0.5, 1.5, 3000.0))
    assert crossovers(hi_run, lo_run, 1e6) == []


def test_groups_by_glob_and_by_column():
    curves = [run(f"recipeA_s{k}", 20 + k, 0.62, 1.5, 3000.0) for k in range(2)]
    curves += [run(f"recipeB_s{k}", 30 + k, 0.62, 1.5, 3000.0) for k in range(2)]
    groups = group_curves(curves, ["A=recipeA_*", "B=recipeB_*"])
    assert [(n, [c.name for c in m]) for n, m in groups] == [
        ("A", ["recipeA_s0", "recipeA_s1"]),
        ("B", ["recipeB_s0", "recipeB_s1"]),
    ]
    for c in curves:
        c.group = c.name.split("_")[0]
    assert [n for n, _ in group_curves(curves, by="recipe")] == ["recipe=recipeA", "recipe=recipeB"]
    with pytest.raises(InputError, match="no run matches"):
        group_curves(curves, ["C=nothing*"])
    with pytest.raises(InputError, match="NAME=GLOB"):
        group_curves(curves, ["justaglob*"])
