"""Fits on synthetic curves with known parameters."""

import numpy as np
import pytest

from scalerl.curvefit.curves import sigmoid
from scalerl.curvefit.data import Curve, clean_curve
from scalerl.curvefit.errors import InputError
from scalerl.curvefit.fit import FitOptions, fit_curves
from scalerl.curvefit.paper_method import fit_sigmoid_paper
from scalerl.curvefit.sigmoid_fit import fit_sigmoid

TRUE = dict(A=0.61, B=1.5, c_mid=3000.0, R0=0.2)


def synthetic(seed, n=200, noise=0.01, x_max=50000.0, x_label="gpu_hours", **params):
    p = {**TRUE, **params}
    rng = np.random.default_rng(seed)
    x = np.concatenate([[0.0], np.linspace(x_max / n, x_max, n)])
    y = sigmoid(x, p["A"], p["B"], p["c_mid"], p["R0"]) + rng.normal(0, noise, len(x))
    y[0] = p["R0"]
    return clean_curve(f"synthetic-{seed}", x, y, x_label, "pass_rate")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_recovers_known_parameters_within_intervals(seed):
    fit = fit_curves([synthetic(seed)], FitOptions(n_boot=400))
    for name, key in (("A", "A"), ("B", "B"), ("C_mid", "c_mid")):
        lo, hi = fit.ci(name)
        assert lo <= TRUE[key] <= hi, (name, lo, hi)
    assert fit.params.A == pytest.approx(TRUE["A"], abs=0.01)
    assert fit.r2 > 0.8
    assert fit.warnings == []


def test_interval_coverage_is_calibrated():
    """Over many noisy replications the 90% interval for A should hold the truth about 90% of the time."""
    hits = 0
    trials = 30
    for seed in range(trials):
        fit = fit_curves([synthetic(100 + seed, n=120, noise=0.02)], FitOptions(n_boot=200, seed=seed))
        lo, hi = fit.ci("A")
        hits += lo <= TRUE["A"] <= hi
    # Both sides: 30 of 30 would mean intervals too wide to be informative (measured 25 of 30).
    assert 0.7 <= hits / trials <= 0.97, hits


def test_gpu_hours_warmup_exclusion():
    fit = fit_curves([synthetic(4)], FitOptions(n_boot=100))
    assert fit.threshold == 1500.0 and "gpu-hours" in fit.exclusion_rule
    assert np.all(fit.x[fit.used] >= 1500) and np.all(fit.x[~fit.used] < 1500)
    # Other axes: the first 10% of the log-compute range of the positive points (5 to 1000 here) ...
    fit = fit_curves([synthetic(4, x_label="step", x_max=1000.0)], FitOptions(n_boot=100))
    assert fit.threshold == pytest.approx(5.0 * 200.0**0.1) and fit.n_excluded == 2  # x = 0 and 5
    assert "first 10%" in fit.exclusion_rule
    # ... or the share --warmup gives.
    fit = fit_curves([synthetic(4, x_label="step", x_max=1000.0)], FitOptions(n_boot=100, warmup=0.6))
    assert fit.threshold == pytest.approx(5.0 * 200.0**0.6) and "first 60%" in fit.exclusion_rule
    assert np.all(fit.x[fit.used] >= fit.threshold) and np.all(fit.x[~fit.used] < fit.threshold)
    fit = fit_curves([synthetic(4)], FitOptions(n_boot=100, exclude_before=0.0))
    assert fit.n_excluded == 1  # only x = 0, which a log axis cannot hold


def test_warmup_share_of_the_log_range():
    """FitOptions.warmup moves rule 3's threshold along the log axis; a share that would leave too few points falls
    back to 10%."""
    c = synthetic(4, x_label="step", x_max=1000.0)
    fit = fit_curves([c], FitOptions(n_boot=50, warmup=0.3))
    assert fit.threshold == pytest.approx(5.0 * 200.0**0.3) and "first 30%" in fit.exclusion_rule
    assert np.all(fit.x[fit.used] >= fit.threshold) and np.all(fit.x[~fit.used] < fit.threshold)
    # On a log-spaced axis 95% of the log range leaves a handful of points: the default share instead.
    x = np.geomspace(1.0, 1e6, 40)
    y = 0.3 + 0.3 / (1.0 + (1e3 / x) ** 0.8)
    fit = fit_curves([Curve("log", x, y, "flops", "pass_rate")], FitOptions(n_boot=50, warmup=0.95))
    assert fit.threshold == pytest.approx(1e6**0.1) and "first 10%" in fit.exclusion_rule


def test_free_r0_is_recovered():
    fit = fit_curves([synthetic(5, c_mid=8000.0)], FitOptions(r0="fit", n_boot=200, exclude_before=0.0))
    assert fit.params.R0 == pytest.approx(TRUE["R0"], abs=0.03)
    lo, hi = fit.ci("R0")
    assert lo <= TRUE["R0"] <= hi


def test_fast_method_is_at_least_as_accurate_as_paper_method():
    c = synthetic(6, n=150)
    x, y = c.x[c.x >= 1500], c.y[c.x >= 1500]
    fast = fit_sigmoid(x, y, TRUE["R0"])
    paper = fit_sigmoid_paper(x, y, TRUE["R0"])
    sse = lambda p: float(np.sum((p(x) - y) ** 2))  # noqa: E731
    assert sse(fast) <= sse(paper) * (1 + 1e-6)
    assert abs(fast.A - TRUE["A"]) <= abs(paper.A - TRUE["A"]) + 0.005


def test_paper_method_says_it_fits_unweighted():
    c = synthetic(5, n=60)
    c.samples = np.full(len(c), 500.0)
    flag = "--method paper fits the curve unweighted"
    assert any(w.startswith(flag) for w in fit_curves([c], FitOptions(n_boot=50, method="paper")).warnings)
    assert not any(w.startswith(flag) for w in fit_curves([c], FitOptions(n_boot=50)).warnings)
    c.samples = None  # nothing to weight by: nothing to say
    assert not any(w.startswith(flag) for w in fit_curves([c], FitOptions(n_boot=50, method="paper")).warnings)


def test_unbent_data_is_flagged():
    # Only the first, near-linear part of a curve whose midpoint lies far beyond the data.
    c = synthetic(7, A=0.9, c_mid=1e6, B=1.0, noise=0.003)
    fit = fit_curves([c], FitOptions(n_boot=200))
    assert any("ceiling not identified" in w or "never bend" in w for w in fit.warnings), fit.warnings


def test_a_rise_inside_the_warm_up_is_flagged():
    # Up within the first steps, then a slow decline (cs336's 5e-5 learning rate): the fitted (post-warm-up) points
    # hold no rise, and the sigmoid parks its bend at the search limit to draw a level.
    c = synthetic(8, A=0.6, c_mid=2.0, B=4.0, noise=0.005, x_max=1000.0, x_label="step")
    c = clean_curve("decline", c.x, c.y - 0.05 * c.x / 1000.0, "step", "pass_rate")
    fit = fit_curves([c], FitOptions(n_boot=100))
    assert any(w.startswith("no rise in the fitted points") for w in fit.warnings), fit.warnings
    # ... and a clean sigmoid with its bend in the data is not.
    clean = fit_curves([synthetic(9)], FitOptions(n_boot=100))
    assert not any(w.startswith("no rise in the fitted points") for w in clean.warnings), clean.warnings


def test_power_law_overshoots_the_ceiling_when_fitted_early():
    """The paper's contrast: before saturation, a power law puts the ceiling far above where the data go."""
    c = synthetic(8, A=0.65, B=1.2, c_mid=8000.0, R0=0.25, x_max=100000.0, noise=0.005)
    early = clean_curve("early", c.x[c.x <= 25000], c.y[c.x <= 25000], "gpu_hours", "pass_rate")
    fit = fit_curves([early], FitOptions(n_boot=200))
    assert fit.power_law.A > 0.85  # the power law sees no bend: its ceiling runs towards the bound
    assert fit.params.A == pytest.approx(0.65, abs=0.03)
    assert fit.ci("A")[1] < 0.75


def test_seed_group_widens_intervals():
    seeds = [synthetic(20 + k, A=0.61 + 0.02 * (k - 1)) for k in range(3)]
    one = fit_curves(seeds[:1], FitOptions(n_boot=300))
    group = fit_curves(seeds, FitOptions(n_boot=300), name="group")
    assert group.n_seeds == 3
    width = lambda f: f.ci("A")[1] - f.ci("A")[0]  # noqa: E731
    assert width(group) > width(one)
    lo, hi = group.ci("A")
    assert lo <= 0.61 <= hi


def test_seeds_of_unequal_length_pool():
    """Seeds are resampled with replacement, so a replica can hold the longest seed twice (it overflowed its rows:
    internal error on tests/data/spurious_rewards_subset.csv --group-by model)."""
    seeds = [synthetic(30, n=120), synthetic(31, n=200)]
    group = fit_curves(seeds, FitOptions(n_boot=200), name="group")
    assert group.n_seeds == 2
    lo, hi = group.ci("A")
    assert lo < hi and abs(group.params.A - 0.61) < 0.02


def test_too_few_points_is_an_input_error():
    c = clean_curve("tiny", [0, 1, 2, 3], [0.1, 0.2, 0.3, 0.35], "step", "pass_rate")
    with pytest.raises(InputError, match="too few points"):
        fit_curves([c], FitOptions())


def _trl_like(first, noise_seed=0):
    """Evaluations every 50 steps of a run rising from 0.2 to 0.7 (C_mid 200, B 1.5), as TRL's eval_steps log it."""
    x = np.arange(first, 1001, 50.0)
    y = 0.2 + 0.5 / (1 + (200 / np.maximum(x, 1e-9)) ** 1.5) + np.random.default_rng(noise_seed).normal(0, 0.01, len(x))
    return clean_curve("trl", x, y, "step", "eval_accuracy", [])


def test_r0_from_a_first_evaluation_well_above_zero_compute_warns():
    """R0 defaults to the first evaluation; a first evaluation at step 50 (TRL's first eval_steps) comes after the run
    has risen, and the fit was biased without a word. It now warns, pointing at --r0 fit / VALUE; R0 itself is
    unchanged, and a run evaluated at step 0, a fixed or fitted R0, do not warn."""
    late = _trl_like(50)
    fit = fit_curves([late], FitOptions(n_boot=50))
    assert fit.params.R0 == late.y[0]  # the default is unchanged
    (w,) = [w for w in fit.warnings if w.startswith("R0 = ")]
    assert "the first evaluation, at step = 50, not at zero compute" in w and "--r0 fit" in w
    for opts in (FitOptions(n_boot=50, r0="fit"), FitOptions(n_boot=50, r0=0.2)):
        assert not [w for w in fit_curves([late], opts).warnings if w.startswith("R0 = ")]
    at_zero = fit_curves([_trl_like(0)], FitOptions(n_boot=50))
    assert not [w for w in at_zero.warnings if w.startswith("R0 = ")]


def test_a_run_dir_step_zero_evaluation_does_not_warn_about_r0(tmp_path):
    """A scalerl run's step-0 evaluation is the policy before RL, yet carries the gpu_hours of the moment before it
    (1e-4 in build/gpu_check runs, not 0): its R0 is not late, and a slow rise (B 0.3) that would warn at that compute
    on another axis does not warn here."""
    import json

    from scalerl.curvefit.readers import ReadOptions, read_sources

    (tmp_path / "run").mkdir()
    steps = np.arange(0, 1001, 25)
    gpu_hours = 1e-4 + steps * 0.0009
    y = 0.16 + 0.7 / (1 + (0.05 / gpu_hours) ** 0.3)
    (tmp_path / "run" / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"kind": "eval", "step": int(s), "gpu_hours": g, "pass_rate": round(float(v), 4)}) + "\n"
            for s, g, v in zip(steps, gpu_hours, y)
        )
    )
    (run,) = read_sources([tmp_path / "run"], ReadOptions())
    assert run.x[0] == pytest.approx(1e-4) and run.starts_before_training
    fit = fit_curves([run], FitOptions(n_boot=50))
    assert not [w for w in fit.warnings if w.startswith("R0 = ")], fit.warnings
    run.starts_before_training = False  # the same points from a file that does not say so: a late R0
    assert [w for w in fit_curves([run], FitOptions(n_boot=50)).warnings if w.startswith("R0 = ")]


def test_in_a_multi_task_run_only_the_task_evaluated_at_step_zero_starts_before_training(tmp_path):
    """The step-0 mark is per curve: a task first evaluated at step 100 of a multi-task run still gets its late-R0
    warning, though another task was evaluated at step 0."""
    import json

    from scalerl.curvefit.readers import ReadOptions, read_sources

    (tmp_path / "run").mkdir()
    lines = []
    for task, first in (("math", 0), ("code", 100)):
        for s in range(first, 1001, 25):
            g = 1e-4 + s * 0.0009
            lines.append({"kind": "eval", "task": task, "step": s, "gpu_hours": g, "pass_rate": 0.2 + 0.5 * s / 1000})
    (tmp_path / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    curves = {c.name: c for c in read_sources([tmp_path / "run"], ReadOptions())}
    assert curves["run/math"].starts_before_training
    assert not curves["run/code"].starts_before_training


def test_paper_method_scales_its_grid_with_the_bound():
    # A metric in percent cost 16,000 A values (0.005 apart in its own units: hours of curve_fit); the grid is now the
    # published one, or its spacing, as shares of the bound, and the fit is the pass rate's scaled.
    from scalerl.curvefit.paper_method import PAPER_A_GRID, a_grid

    y = np.array([0.18, 0.3, 0.5])
    assert np.allclose(a_grid(100 * y, 18.0, 100.0), 100 * PAPER_A_GRID)
    assert np.allclose(a_grid(y, 0.18, 1.0), PAPER_A_GRID)
    for bound in (1.0, 2.0, 100.0, 1e4):
        assert 1 <= len(a_grid(0.9 * bound * np.ones(3), 0.5 * bound, bound)) <= 200
        assert list(a_grid(np.ones(3) * bound, 0.999 * bound, bound)) == [bound]  # R0 within a step of the bound
    c = synthetic(7, n=40)
    x, y = c.x[c.x > 0], c.y[c.x > 0]
    pass_rate = fit_sigmoid_paper(x, y, TRUE["R0"], n_cmid=8)
    percent = fit_sigmoid_paper(x, 100 * y, 100 * TRUE["R0"], bound=100.0, n_cmid=8)
    assert percent.A == pytest.approx(100 * pass_rate.A) and percent.B == pytest.approx(pass_rate.B, rel=1e-3)
