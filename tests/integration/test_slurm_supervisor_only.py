"""Under srun no task supervises the step (the trainer task execs `scalerl trainer`), so the [run] keys only
`scalerl train`'s own supervisor acts on are refused in one line when changed from their defaults, before any
process starts; the live forecast, on by default, is not refused but said once not to run. A real subprocess of the
CLI (--dry-run: nothing is started)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SRUN = {"SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": "7"}


def dry_run(tmp_path, *args, procid=0):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SRUN, SLURM_PROCID=str(procid))
    return subprocess.run(
        [sys.executable, "-m", "scalerl.cli", "train", "--dry-run", "--run-dir", str(tmp_path / "run"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def refusal(key: str, shown: str) -> str:
    return (
        f"scalerl: error: slurm: run.{key} = {shown} acts only under scalerl train's own supervisor, which does not "
        f"run under srun (each task runs one role): remove it, or run scalerl train outside srun"
    )


@pytest.mark.parametrize(
    "sets, key, shown",
    [
        (["run.stop_if_gain_below=0.05"], "stop_if_gain_below", "0.05"),
        (["run.target=0.5", "run.stop_if_target_unreachable=0.9"], "stop_if_target_unreachable", "0.9"),
        (['run.trackers=["tensorboard"]'], "trackers", '["tensorboard"]'),
        (["run.restart_generators=true"], "restart_generators", "true"),
        (["run.budget=100.0"], "budget", "100.0"),
    ],
)
def test_supervisor_only_keys_are_refused_under_srun(tmp_path, sets, key, shown):
    r = dry_run(tmp_path, *[a for s in sets for a in ("--set", s)])
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [refusal(key, shown)]
    assert not (tmp_path / "run").exists()


def test_the_reviewers_case_names_the_first_key(tmp_path):
    r = dry_run(
        tmp_path,
        "--set",
        "run.stop_if_gain_below=0.05",
        "--set",
        'run.trackers=["tensorboard"]',
        "--set",
        "run.restart_generators=true",
    )
    assert r.returncode == 2
    assert r.stderr.splitlines() == [refusal("stop_if_gain_below", "0.05")]


def test_defaults_spelled_out_are_not_refused(tmp_path):
    r = dry_run(tmp_path, "--set", "run.trackers=[]", "--set", "run.restart_generators=false", "--set", "run.budget=0")
    assert r.returncode == 0, r.stderr


def test_the_default_live_forecast_is_said_not_to_run_once_for_the_step(tmp_path):
    run = tmp_path / "run"
    line = (
        "scalerl train: slurm task 0/2: the live forecast does not run under srun (no forecast.jsonl); "
        f"run `scalerl forecast {run} --budget X` afterwards"
    )
    r = dry_run(tmp_path)
    assert r.returncode == 0 and r.stderr.splitlines() == [line]
    assert dry_run(tmp_path, procid=1).stderr == ""  # the other tasks do not repeat it
    assert dry_run(tmp_path, "--set", "run.live_forecast=false").stderr == ""


def test_every_key_is_one_of_run():
    from scalerl.cli.run_config import RunSection
    from scalerl.cli.slurm_task import SUPERVISOR_ONLY

    assert set(SUPERVISOR_ONLY) <= set(RunSection.__dataclass_fields__)
