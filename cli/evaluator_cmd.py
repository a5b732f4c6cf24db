"""`scalerl evaluator`: run the held-out evaluator process (started by `scalerl train` when trainer.eval_mode is
"process"; by hand or from a slurm script otherwise)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Run config (RUN/config.toml): [generator] sets the engine, [trainer] the evaluation, [wiring] the sockets.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a [generator], [trainer] or [wiring] key (repeatable).",
)
def evaluator(config_path, sets):
    """Run the evaluator: scores each policy version the trainer asks for (mean@k on the held-out prompts) on an
    engine of its own, with exactly that version's weights, while the trainer trains on (docs/trainer.md).

    Exit codes: 0 stopped by the trainer's Shutdown, SIGTERM or SIGINT; 1 failure (e.g. the trainer went silent
    for peer_timeout_s); 2 bad config, or a held-out prompt too long for the model.
    """
    import logging
    import sys

    from scalerl.generator_service.config import SECTION, GeneratorConfig
    from scalerl.shared.config import ConfigError, load_sections
    from scalerl.shared.wiring import RunWiring
    from scalerl.trainer_service.config import TrainerConfig

    from .defaults import section_defaults

    classes = {SECTION: GeneratorConfig, "trainer": TrainerConfig, "wiring": RunWiring}
    gen, trainer, wiring = load_sections(config_path, classes, list(sets), defaults=section_defaults)
    if not wiring.eval_weights_addr:
        raise ConfigError(f"{config_path}: wiring.eval_weights_addr is not set (scalerl train sets it)")
    from scalerl.generator_service.evaluator_service import EVALUATOR_ID, evaluator_generator_config, run_evaluator

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s evaluator[{EVALUATOR_ID}] %(levelname)s %(message)s"
    )
    code = run_evaluator(*evaluator_generator_config(gen, wiring), trainer)
    if code:
        sys.exit(code)
