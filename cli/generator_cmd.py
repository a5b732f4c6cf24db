"""`scalerl generator`: run one generator process (slurm scripts, one per GPU or CPU slot)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path), help="TOML file; only its [generator] table is read."
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="generator.KEY=VALUE",
    help="Override a [generator] key (repeatable), e.g. --set generator.peer_id=gen-3.",
)
def generator(config_path, sets):
    """Run a generator: connects to the trainer's sockets, samples completions, scores them, sends rollouts.

    Weights are swapped in between decode steps while sequences are in flight. Keys and an example
    config: docs/generator.md.
    Exit codes: 0 stopped by the trainer's Shutdown, SIGTERM or SIGINT; 1 failure (e.g. the trainer
    went silent for peer_timeout_s); 2 bad config.
    """
    import sys

    from scalerl.generator_service.config import SECTION, GeneratorConfig
    from scalerl.shared.config import load_section

    from .defaults import section_defaults

    cfg = load_section(config_path, SECTION, GeneratorConfig, list(sets), defaults=section_defaults)
    from scalerl.generator_service.service import configure_logging, run_generator  # imports torch

    configure_logging(cfg.peer_id)
    code = run_generator(cfg)
    if code:
        sys.exit(code)
