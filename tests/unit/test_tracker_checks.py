"""Before any process starts, `scalerl train` refuses a tracker named twice and one whose package is not installed,
each in one line (exit 2); it used to warn once the processes were up and run on without it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from scalerl.cli import trackers
from scalerl.shared.config import ConfigError


def without(monkeypatch, missing: str):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))


def test_a_tracker_named_twice_is_refused():
    with pytest.raises(ConfigError) as e:
        trackers.check_names(("wandb", "wandb"))
    assert str(e.value) == "run.trackers names 'wandb' twice: list each tracker once"
    trackers.check_names(("tensorboard", "wandb"))


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_a_tracker_without_its_package_names_the_extra(monkeypatch, name):
    without(monkeypatch, name)
    with pytest.raises(ConfigError) as e:
        trackers.check((name,))
    assert str(e.value) == (
        f"run.trackers names {name!r}, but the {name} package is not installed: "
        f"pip install 'scalerl[{name}]' (from a checkout: pip install -e '.[{name}]')"
    )


def test_installed_trackers_pass_without_being_imported(monkeypatch):
    found = []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: found.append(name) or real(name, *a))
    if real("tensorboard") is None or real("wandb") is None:
        pytest.skip("needs the tensorboard and wandb extras")
    trackers.check(("tensorboard", "wandb"))
    assert found == ["tensorboard", "wandb"]


# `scalerl train` itself, in a subprocess whose find_spec does not find tensorboard.
MAIN = """
import importlib.util, sys
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "tensorboard" else real(name, *a)
from scalerl.cli.main import main
main(sys.argv[1:])
"""


def train(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.run(
        [sys.executable, "-c", MAIN, "train", "--run-dir", str(tmp_path / "run"), "--max-steps", "2", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )


def test_train_refuses_a_missing_tracker_package_before_the_start(tmp_path):
    r = train(tmp_path, "--set", 'run.trackers=["tensorboard"]')
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "scalerl: error: run.trackers names 'tensorboard', but the tensorboard package is not installed: "
        "pip install 'scalerl[tensorboard]' (from a checkout: pip install -e '.[tensorboard]')"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_train_refuses_a_tracker_named_twice(tmp_path, dry_run):
    r = train(tmp_path, "--set", 'run.trackers=["wandb", "wandb"]', *dry_run)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == ["scalerl: error: run.trackers names 'wandb' twice: list each tracker once"]
    assert not (tmp_path / "run").exists()


def test_config_show_refuses_a_tracker_named_twice_as_train_does(tmp_path):
    args = [sys.executable, "-m", "scalerl.cli", "config", "show", "--set", 'run.trackers=["wandb", "wandb"]']
    r = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == ["scalerl: error: run.trackers names 'wandb' twice: list each tracker once"]
