"""`scalerl train --resume` keeps the settings the run was started with. Before, it resolved the config from the
resuming command alone and wrote it over RUN/config.toml: a `--set trainer.checkpoint_every=2` or an optimizer
setting not repeated went back to its default, and a new `trainer.optim.lr` was written there while the checkpoint's
optimizer state restored the old one (the steps after the resume trained at the old rate)."""

import subprocess
import sys
import tomllib

from scalerl.shared.models.tiny_model import ensure_tiny_model


def scalerl(*args):
    return [sys.executable, "-m", "scalerl.cli", *map(str, args)]


def config(run):
    return tomllib.loads((run / "config.toml").read_text())


def test_a_resume_keeps_the_runs_settings_and_refuses_what_the_checkpoint_restores(tmp_path):
    ensure_tiny_model()
    run = tmp_path / "run"
    start = ["train", "--run-dir", run, "--max-steps", 2, "--set", "trainer.checkpoint_every=2"]
    r = subprocess.run(scalerl(*start, "--set", "trainer.optim.weight_decay=0.0"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert tomllib.loads((run / "settings.toml").read_text())["trainer"]["optim"] == {"weight_decay": 0.0}

    # A bare resume: nothing repeated, only the new length.
    r = subprocess.run(scalerl("train", "--run-dir", run, "--resume", "--max-steps", 4), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resume changes trainer.max_steps 2 -> 4" in r.stderr, r.stderr[-2000:]
    cfg = config(run)
    assert cfg["trainer"]["checkpoint_every"] == 2 and cfg["trainer"]["optim"]["weight_decay"] == 0.0
    assert cfg["trainer"]["max_steps"] == 4
    assert (run / "checkpoints" / "step-000004").is_dir()  # checkpoint_every=2 still acted

    # A learning rate the checkpoint would restore: refused before anything starts, the run's files as they were.
    before = (run / "config.toml").read_text()
    r = subprocess.run(
        scalerl("train", "--run-dir", run, "--resume", "--max-steps", 6, "--set", "trainer.optim.lr=1e-3"),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("scalerl: error: trainer.optim.lr = 0.001 differs from the run's 2e-05"), last
    assert (run / "config.toml").read_text() == before
