"""`scalerl generator`: run one generator process (slurm scripts, one per GPU or CPU slot)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="TOML file; its [generator] and [wiring] tables are read.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a [generator] or [wiring] key (repeatable), e.g. --set generator.peer_id=gen-3.",
)
def generator(config_path, sets):
    """Run a generator: connects to the trainer's sockets, samples completions, scores them, sends rollouts.

    Weights are swapped in between decode steps while sequences are in flight. Keys and an example
    config: docs/generator.md.
    Exit codes: 0 stopped by the trainer's Shutdown, SIGTERM or SIGINT; 1 failure (e.g. the trainer
    went silent for peer_timeout_s); 2 bad config or model directory (checked before the torch import).
    """
    import sys

    from scalerl.generator_service.config import SECTION, GeneratorConfig
    from scalerl.shared.config import ConfigError, load_sections
    from scalerl.shared.wiring import RunWiring

    from .defaults import section_defaults
    from .run_setup import check_model_dir, check_standalone_inputs

    classes = {SECTION: GeneratorConfig, "wiring": RunWiring}
    cfg, wiring = load_sections(config_path, classes, list(sets), defaults=section_defaults)
    try:
        cfg.check_wiring(wiring)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    # As scalerl train does before it starts anything: a bad model directory or tokenizer, or a model the torch
    # engine cannot run, is one line and exit 2 here, not found after the torch import and the engine's load.
    # Not the task's prompts: the trainer renders them, under the run's task.chat_template and system_prompt, which
    # this process does not know (a tokenizer refused only with the default template would refuse every generator).
    check_standalone_inputs(_as_run(cfg), "generator.model", check=check_model_dir)
    from scalerl.generator_service.service import configure_logging, run_generator  # imports torch

    configure_logging(cfg.peer_id)
    code = run_generator(cfg, wiring)
    if code:
        sys.exit(code)


def _as_run(cfg):
    """The generator's section seen as the resolved run config that check_model_dir reads: the model (directory,
    tokenizer, what this generator's engine can run); evaluation is not this process's."""
    from types import SimpleNamespace

    return SimpleNamespace(run=SimpleNamespace(model=cfg.model), eval=SimpleNamespace(mode="process"), generator=cfg)
