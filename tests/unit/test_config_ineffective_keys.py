"""More settings that cannot take effect, refused before any process starts in one line that names the key (exit 2),
and only when the user changed them from their default (a file spelling out every default still loads); and a host
the run could not bind (IPv6)."""

import subprocess
import sys
from pathlib import Path

import pytest

from scalerl.cli.run_config import resolve
from scalerl.shared.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def config(tmp_path, *sets: str, path=None):
    return resolve(path, list(sets), run_dir=str(tmp_path / "run"))[1]


def refused(tmp_path, *sets: str) -> str:
    with pytest.raises(ConfigError) as e:
        config(tmp_path, *sets)
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


@pytest.fixture(autouse=True)
def outside_srun(monkeypatch):
    for var in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "SCALERL_SLURM"):
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------- loss-kind parameters of a kind not chosen


@pytest.mark.parametrize(
    "sets, needle",
    [
        (
            ["trainer.loss.dapo_eps=[0.1, 0.2]"],
            "trainer.loss.dapo_eps = [0.1, 0.2] is set but trainer.loss.kind = 'cispo': it acts only with "
            "kind = 'dapo'",
        ),
        (
            ["trainer.loss.gspo_eps=[1e-4, 2e-4]"],
            "trainer.loss.gspo_eps = [0.0001, 0.0002] is set but trainer.loss.kind = 'cispo'",
        ),
        (
            ["trainer.loss.grpo_eps=[0.1, 0.1]", "trainer.loss.kind=dapo"],
            "trainer.loss.grpo_eps = [0.1, 0.1] is set but trainer.loss.kind = 'dapo'",
        ),
        (
            ["trainer.loss.cispo_eps_max=5", "trainer.loss.kind=dapo"],
            "trainer.loss.cispo_eps_max = 5 is set but trainer.loss.kind = 'dapo': it acts only with kind = 'cispo'",
        ),
        (
            ["trainer.loss.dapo_eps=[0.1, 0.2]", "trainer.loss.kind=gspo"],
            "trainer.loss.dapo_eps = [0.1, 0.2] is set but trainer.loss.kind = 'gspo'",
        ),
    ],
)
def test_a_loss_parameter_of_a_kind_not_chosen_is_refused(tmp_path, sets, needle):
    assert refused(tmp_path, *sets).startswith(needle)


@pytest.mark.parametrize(
    "sets",
    [
        ["trainer.loss.dapo_eps=[0.1, 0.2]", "trainer.loss.kind=dapo"],
        ["trainer.loss.grpo_eps=[0.1, 0.1]", "trainer.loss.kind=grpo"],
        ["trainer.loss.gspo_eps=[1e-4, 2e-4]", "trainer.loss.kind=gspo"],
        ["trainer.loss.cispo_eps_max=5"],
        # at their defaults, as scalerl.toml spells them out, under any kind
        ["trainer.loss.kind=dapo", "trainer.loss.cispo_eps_max=4.0", "trainer.loss.gspo_eps=[3e-4, 4e-4]"],
    ],
)
def test_a_loss_parameter_of_the_chosen_kind_or_at_its_default_resolves(tmp_path, sets):
    config(tmp_path, *sets)


# ---------------------------------------------------------------- npr_threshold, thinking_budget, dist_backend, wandb


def test_npr_threshold_without_no_positive_resampling_is_refused(tmp_path):
    msg = refused(tmp_path, "trainer.prompts.npr_threshold=0.5", "trainer.prompts.no_positive_resampling=false")
    assert msg.startswith(
        "trainer.prompts.npr_threshold = 0.5 is set but trainer.prompts.no_positive_resampling = false: it acts only "
        "with no_positive_resampling = true"
    ), msg
    config(tmp_path, "trainer.prompts.npr_threshold=0.5")
    config(tmp_path, "trainer.prompts.npr_threshold=0.9", "trainer.prompts.no_positive_resampling=false")


def test_a_thinking_budget_no_completion_reaches_is_refused(tmp_path):
    msg = refused(tmp_path, "generator.thinking_budget=[16, 20]")  # the built-in model's max_new_tokens is 16
    assert msg.startswith(
        "generator.thinking_budget = [16, 20] is never reached: a completion ends at trainer.max_new_tokens = 16 "
        "tokens, before its smallest budget"
    ), msg
    refused(tmp_path, "generator.thinking_budget=[30, 40]", "trainer.max_new_tokens=30")
    config(tmp_path, "generator.thinking_budget=[15, 20]")  # some draws interrupt
    config(tmp_path, "generator.thinking_budget=[22, 26]", "trainer.max_new_tokens=64")


@pytest.mark.parametrize("transport", ["zmq", "vllm-gloo"])
def test_dist_backend_outside_the_dist_transport_is_refused(tmp_path, transport):
    sets = ["generator.dist_backend=nccl", f"generator.weights_transport='{transport}'"]
    if transport != "zmq":
        sets.append("generator.backend=vllm")
    msg = refused(tmp_path, *sets)
    assert msg.startswith(
        f"generator.dist_backend = 'nccl' is set but generator.weights_transport = '{transport}': it acts only with "
        "weights_transport = 'dist'"
    ), msg
    config(tmp_path, "generator.dist_backend=gloo")  # its default


def test_wandb_project_without_the_wandb_tracker_is_refused(tmp_path):
    msg = refused(tmp_path, "run.wandb_project='mine'")
    assert msg.startswith(
        "run.wandb_project = 'mine' is set but run.trackers = []: it acts only with 'wandb' in run.trackers"
    ), msg
    refused(tmp_path, "run.wandb_project='mine'", "run.trackers=['tensorboard']")
    config(tmp_path, "run.wandb_project='mine'", "run.trackers=['wandb']")
    config(tmp_path, "run.wandb_project='scalerl'")


# ---------------------------------------------------------------- the reference files and the CLI


def test_the_reference_and_example_files_still_resolve(tmp_path):
    for path in [ROOT / "scalerl.toml", *sorted((ROOT / "examples").glob("*.toml"))]:
        config(tmp_path, path=path)
    config(tmp_path)


def test_config_show_refuses_in_one_line_exit_2():
    r = subprocess.run(
        [sys.executable, "-m", "scalerl.cli", "config", "show", "--set", "run.wandb_project='x'"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "run.wandb_project = 'x' is set but" in lines[0], r.stderr
