"""`scalerl train --dry-run` refuses what the start itself would: a fresh run (no --resume) in a run dir that already
holds one, with the start's own line and exit 2; plainly and under srun. A real subprocess of the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

SRUN = {
    "SLURM_PROCID": "0",
    "SLURM_NTASKS": "2",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_JOB_NODELIST": "localhost",
    "SLURM_JOB_ID": "7",
}


def dry_run(tmp_path, *args, slurm_env=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(slurm_env or {})
    return subprocess.run(
        [sys.executable, "-m", "scalerl.cli", "train", "--dry-run", "--run-dir", str(tmp_path / "r1"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def held(tmp_path):
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')


def test_dry_run_of_a_fresh_run_over_a_held_run_dir_is_refused(tmp_path):
    held(tmp_path)
    r = dry_run(tmp_path, "--max-steps", "8")
    assert r.returncode == 2, r.stdout
    assert r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"scalerl: error: {tmp_path / 'r1'} already holds a run; pass --resume to continue it or choose another run dir"
    ]
    assert sorted(p.name for p in (tmp_path / "r1").iterdir()) == ["metrics.jsonl"]  # nothing written


def test_dry_run_under_srun_refuses_it_too(tmp_path):
    held(tmp_path)
    r = dry_run(tmp_path, slurm_env=SRUN)
    assert r.returncode == 2, r.stdout
    assert r.stderr.splitlines() == [
        f"scalerl: error: {tmp_path / 'r1'} already holds a run; pass --resume to continue it or choose another run dir"
    ]


def test_a_new_or_empty_run_dir_still_plans(tmp_path):
    assert dry_run(tmp_path).returncode == 0
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "metrics.jsonl").write_text("")  # a start that failed before its first evaluation
    assert dry_run(tmp_path).returncode == 0
    assert dry_run(tmp_path, slurm_env=SRUN).returncode == 0
