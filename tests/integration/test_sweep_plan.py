"""`scalerl sweep` plans and sbatch scripts, and `compare` / `plot` on a sweep dir (no training here)."""

import json
import subprocess
import tomllib

import numpy as np
import pytest

from scalerl.cli.sweep_cmd import LEAVE_ONE_OUT
from tests.conftest import run_cli


def test_leave_one_out_plan_has_one_variant_per_ingredient(tmp_path):
    sweep = tmp_path / "loo"
    base = tmp_path / "base.toml"
    base.write_text("[generator]\nthinking_budget = [10, 12]\nanswer_budget = 4\n[trainer]\nmax_new_tokens = 24\n")
    r = run_cli("sweep", sweep, "--leave-one-out", "--config", base, "--max-minutes", 2, "--emit-sbatch")
    assert r.returncode == 0, r.stderr
    plan = json.loads((sweep / "sweep.json").read_text())
    names = [v["name"] for v in plan["variants"]]
    assert names == ["baseline"] + [name for name, *_ in LEAVE_ONE_OUT] and plan["baseline"] == "baseline"
    assert plan["kind"] == "leave-one-out" and plan["max_minutes"] == 2 and plan["skipped"] == []

    def resolved(name):
        with open(sweep / name / "resolved.toml", "rb") as f:
            return tomllib.load(f)

    base_r = resolved("baseline")
    assert base_r["generator"]["thinking_budget"] == [10, 12] and base_r["trainer"]["max_new_tokens"] == 24
    expect = {
        "dapo-loss": ("trainer", "loss", "kind", "dapo"),
        "no-fp32-head": ("trainer", "loss", "fp32_lm_head", False),
        "sample-aggregation": ("trainer", "loss", "aggregation", "sample"),
        "prompt-adv-norm": ("trainer", "loss", "adv_norm", "prompt"),
        "no-zero-variance-filter": ("trainer", "loss", "zero_variance_filter", False),
        "no-npr": ("trainer", "prompts", "no_positive_resampling", False),
        "ppo-off-policy": ("trainer", None, "mode", "ppo_off_policy"),
    }
    for name, (section, sub, key, value) in expect.items():
        r_ = resolved(name)
        node = r_[section][sub] if sub else r_[section]
        assert node[key] == value, name
        assert r_["trainer"]["max_new_tokens"] == 24  # the base config is kept
    assert "thinking_budget" not in resolved("no-interruption")["generator"]  # unset = no forced interruption
    assert "answer_budget" not in resolved("no-interruption")["generator"]  # left in, the run would refuse it
    assert resolved("no-fp32-head")["generator"]["fp32_lm_head"] is False  # forwarded to the generators too
    # Each variant's own config is what its scalerl train reads.
    assert "[trainer.loss]" in (sweep / "dapo-loss" / "config.toml").read_text()


def test_leave_one_out_skips_what_the_base_already_lacks(tmp_path):
    r = run_cli("sweep", tmp_path / "s", "--leave-one-out", "--set", "trainer.loss.kind=dapo", "--emit-sbatch")
    assert r.returncode == 0, r.stderr
    plan = json.loads((tmp_path / "s" / "sweep.json").read_text())
    skipped = {s["name"] for s in plan["skipped"]}
    assert skipped == {"dapo-loss", "no-interruption"}  # the built-in default has no thinking budget
    assert "skipping dapo-loss" in r.stderr


def test_emit_sbatch_names_every_variant_and_passes_bash_n(tmp_path):
    sweep = tmp_path / "grid"
    r = run_cli(
        "sweep",
        sweep,
        "--grid",
        "trainer.optim.lr=1e-5,2e-5",
        "--grid",
        "trainer.loss.kind=cispo,dapo",
        "--emit-sbatch",
        "--sbatch-option=--gres=gpu:1",
    )
    assert r.returncode == 0, r.stderr
    script = (sweep / "sweep.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(sweep / "sweep.sbatch")]).returncode == 0
    names = ["lr=1e-05_kind=cispo", "lr=1e-05_kind=dapo", "lr=2e-05_kind=cispo", "lr=2e-05_kind=dapo"]
    assert [v["name"] for v in json.loads((sweep / "sweep.json").read_text())["variants"]] == names
    assert "#SBATCH --array=0-3" in script and "#SBATCH --gres=gpu:1" in script
    # One node and task per variant, cores for its processes; the user's --gres wins over the plan's.
    assert "#SBATCH --nodes=1" in script and "#SBATCH --ntasks=1" in script and "--cpus-per-task=" in script
    assert script.count("--gres") == 1

    assert all(n in script for n in names) and '--only "$VARIANT"' in script
    # The array's own lookup picks the variant of each task id.
    pick = subprocess.run(
        ["bash", "-c", script.split("set -euo pipefail\n")[1].split("# Each task")[0] + 'echo "$VARIANT"'],
        env={"SLURM_ARRAY_TASK_ID": "2"},
        capture_output=True,
        text=True,
    )
    assert pick.stdout.strip() == names[2]


def test_emit_sbatch_asks_for_what_the_device_plan_needs(tmp_path):
    sweep = tmp_path / "g"
    sets = ["run.trainer_procs=2", "run.n_generators=3", "generator.max_batch=64"]
    sets += ["generator.backend='vllm'", "generator.vllm.tensor_parallel_size=2"]
    args = [x for s in sets for x in ("--set", s)]
    r = run_cli("sweep", sweep, "--grid", "trainer.optim.lr=1e-5,2e-5", *args, "--emit-sbatch")
    assert r.returncode == 0, r.stderr
    script = (sweep / "sweep.sbatch").read_text()
    # 2 trainer ranks + 3 vLLM generators at TP 2 + the evaluator (one generator's): as `scalerl train --dry-run`.
    assert "#SBATCH --gres=gpu:10" in script and "#SBATCH --cpus-per-task=40" in script
    # The built-in torch engine runs on CPU: only the trainer's ranks take GPUs, every process still gets cores.
    cpu = tmp_path / "c"
    r = run_cli("sweep", cpu, "--grid", "trainer.optim.lr=1e-5,2e-5", "--set", "run.trainer_procs=2", "--emit-sbatch")
    assert r.returncode == 0, r.stderr
    script = (cpu / "sweep.sbatch").read_text()
    assert "#SBATCH --gres=gpu:2" in script and "#SBATCH --cpus-per-task=16" in script


def test_sweep_refuses_bad_requests(tmp_path):
    r = run_cli("sweep", tmp_path / "s")
    assert r.returncode == 2 and "--leave-one-out or --grid" in r.stderr
    r = run_cli("sweep", tmp_path / "s", "--grid", "trainer.nope=1,2", "--emit-sbatch")
    assert r.returncode == 2 and "trainer.nope" in r.stderr
    assert run_cli("sweep", tmp_path / "g", "--grid", "trainer.max_steps=5,6", "--emit-sbatch").returncode == 0
    r = run_cli("sweep", tmp_path / "g", "--grid", "trainer.max_steps=5,6")
    assert r.returncode == 2 and "--resume" in r.stderr
    r = run_cli("sweep", tmp_path / "g", "--only", "nope")
    assert r.returncode == 2 and "max_steps=5" in r.stderr
    assert run_cli("sweep", tmp_path / "none", "--resume").returncode == 2


def _fake_sweep(root, curves):
    """A leave-one-out sweep dir whose variants' evals follow the given (A, B) sigmoids."""
    root.mkdir()
    variants = [{"name": n, "changes": {}, "ingredient": f"ingredient of {n}", "alternative": "x"} for n in curves]
    plan = {"schema": 1, "kind": "leave-one-out", "baseline": "baseline", "variants": variants, "skipped": []}
    (root / "sweep.json").write_text(json.dumps(plan))
    rng = np.random.default_rng(0)
    for name, (A, B, *rest) in curves.items():
        c_mid, n = rest if rest else (0.3, 40)
        run = root / name / "run"
        run.mkdir(parents=True)
        g = np.r_[0.0, np.geomspace(0.01, 3.0, n)]
        y = 0.2 + (A - 0.2) / (1 + (c_mid / np.maximum(g, 1e-12)) ** B) + rng.normal(0, 0.004, g.size)
        y[0] = 0.2
        lines = [
            {"kind": "eval", "step": i, "gpu_hours": float(x), "time_s": i, "pass_rate": float(v)}
            for i, (x, v) in enumerate(zip(g, y))
        ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_compare_and_plot_read_a_sweep_dir(tmp_path):
    sweep = tmp_path / "sweep"
    curves = {"baseline": (0.8, 1.5), "lower-ceiling": (0.6, 1.5), "same": (0.8, 1.5)}
    curves |= {"never-bends": (0.95, 1.5, 30.0, 40), "two-evals": (0.8, 1.5, 0.3, 2)}
    _fake_sweep(sweep, curves)
    (sweep / "later").mkdir()  # a variant that has not run yet is left out with a warning
    plan = json.loads((sweep / "sweep.json").read_text())
    plan["variants"].append({"name": "later", "changes": {}, "ingredient": "y", "alternative": "z"})
    (sweep / "sweep.json").write_text(json.dumps(plan))
    r = run_cli("compare", sweep, "--json", "--n-boot", 200)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [x["name"] for x in doc["runs"]] == ["baseline", "lower-ceiling", "same", "never-bends"]
    assert [p["runs"][1] for p in doc["pairs"]] == ["lower-ceiling", "same", "never-bends"]
    assert "left out: two-evals: too few points" in r.stderr  # too short to fit: named, not fatal
    rows = {x["variant"]: x for x in doc["sweep"]["ingredients"]}
    assert rows["lower-ceiling"]["effect"] == "helps" and rows["lower-ceiling"]["basis"] == "ceiling A"
    assert rows["same"]["effect"] == "no significant difference"
    # A curve that has not bent gets no verdict on its (extrapolated) ceiling, whatever the intervals say.
    assert rows["never-bends"]["effect"] == "not identified" and not doc["runs"][3]["identified"]
    assert all(x["identified"] for x in doc["runs"][:3])
    assert rows["same"]["ingredient"] == "ingredient of same"
    # A variant with no evaluations is the sweep's concern, not the baseline run's: in the document's warnings.
    assert "sweep variant left out: later: no evaluations yet" in doc["warnings"], doc["warnings"]
    assert not any("later" in w for x in doc["runs"] for w in x["warnings"])
    assert "warning: sweep variant left out: later: no evaluations yet" in r.stderr
    table = run_cli("compare", sweep, "--n-boot", 200)
    assert "does each ingredient help" in table.stdout and "ingredient of lower-ceiling" in table.stdout
    out = tmp_path / "overlay.png"
    r = run_cli("plot", sweep, "-o", out, "--n-boot", 200)
    assert r.returncode == 0 and out.stat().st_size > 10000


@pytest.mark.parametrize("kind", ["grid"])
def test_compare_of_a_grid_sweep_compares_every_pair(tmp_path, kind):
    sweep = tmp_path / "sweep"
    _fake_sweep(sweep, {"a": (0.8, 1.5), "b": (0.6, 1.5), "c": (0.7, 1.5)})
    plan = json.loads((sweep / "sweep.json").read_text())
    (sweep / "sweep.json").write_text(json.dumps({**plan, "kind": kind, "baseline": None}))
    doc = json.loads(run_cli("compare", sweep, "--json", "--n-boot", 200).stdout)
    assert len(doc["pairs"]) == 3 and "sweep" not in doc
