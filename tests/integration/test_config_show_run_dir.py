"""`scalerl config show` shows the run dir the config file or --set gave, with its source; with none, a placeholder
labelled as one (scalerl train picks the run dir: --run-dir, else runs/<date-time>)."""

from __future__ import annotations

import os
import subprocess
import sys


def show(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    r = subprocess.run(
        [sys.executable, "-m", "scalerl.cli", "config", "show", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def run_dir_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("run_dir ="))  # [run] comes first


def test_a_run_dir_from_set_is_shown_as_given():
    out = show("--set", "run.run_dir=myrun")
    assert run_dir_line(out) == 'run_dir = "myrun"                       # --set'
    assert "<run_dir>" not in out


def test_a_run_dir_from_the_file_is_shown_as_given(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[run]\nrun_dir = "fromfile"\n')
    assert run_dir_line(show("--config", str(config))) == 'run_dir = "fromfile"                    # config file'


def test_no_run_dir_is_a_placeholder_labelled_as_one():
    line = run_dir_line(show())
    assert line.startswith('run_dir = "<run_dir>"')
    assert line.endswith("# placeholder: scalerl train's --run-dir, else runs/<date-time>")
    assert "--run-dir" not in line.split("#")[0]
