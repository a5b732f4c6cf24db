"""Preparing a run directory and its model before any process starts; shared by `scalerl train` and its slurm tasks."""

from __future__ import annotations

from pathlib import Path

import click


def prepare_run_dir(cfg, resolved: dict, resume: bool) -> Path:
    """Refuse to clobber a finished or running run, write the resolved config, make sure the model exists.

    Returns the config file every service of the run reads."""
    from scalerl.shared.config import dump_toml
    from scalerl.shared.run_dir import atomic_write_text, check_fresh

    out = Path(cfg.run.run_dir)
    check_fresh(out, resume)
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / "config.toml"
    atomic_write_text(config_file, "# resolved by scalerl train; every default filled in\n" + dump_toml(resolved))
    ensure_model(cfg)
    return config_file


def ensure_model(cfg) -> None:
    """Build the cached tiny model once here, so trainer and generators do not race to build it."""
    if cfg.run.model:
        return
    click.echo("scalerl train: preparing the built-in tiny model (cached after the first run)", err=True)
    from scalerl.shared.tiny_model import ensure_tiny_model

    ensure_tiny_model(task=cfg.trainer.task)
