"""A job step with SLURM_PROCID but no task count (a plain sbatch script without --ntasks) is one task: not slurm
mode, and no error about the missing count."""

import os
import subprocess
import sys

from scalerl.cli import slurm


def test_procid_without_a_task_count_is_not_slurm_mode():
    assert not slurm.active({"SLURM_PROCID": "0", "SLURM_JOB_ID": "123"})
    assert not slurm.active({"SLURM_PROCID": "0", "SLURM_NTASKS": " "})
    assert not slurm.active({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})  # a batch script with --ntasks=2
    assert slurm.active({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2"})  # srun's task


def test_config_show_in_a_one_task_sbatch_script():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SLURM_PROCID="0", SLURM_JOB_ID="123")
    r = subprocess.run(
        [sys.executable, "-m", "scalerl.cli", "config", "show"], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "slurm" not in r.stderr
