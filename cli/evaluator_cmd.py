"""`scalerl evaluator`: run the held-out evaluator process (started by `scalerl train` when eval.mode is
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
    help=(
        "Run config (RUN/config.toml): [generator] sets the engine, [eval] the evaluation, [trainer] the model and "
        "task, [wiring] the sockets."
    ),
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a [generator], [trainer], [eval] or [wiring] key (repeatable).",
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
    from scalerl.shared.eval_config import EvalConfig
    from scalerl.shared.wiring import RunWiring
    from scalerl.trainer_service.config import TrainerConfig, check_eval

    from .defaults import section_defaults

    classes = {SECTION: GeneratorConfig, "trainer": TrainerConfig, "eval": EvalConfig, "wiring": RunWiring}
    gen, trainer, evaluation, wiring = load_sections(config_path, classes, list(sets), defaults=section_defaults)
    if not wiring.eval_weights_addr:
        raise ConfigError(f"{config_path}: wiring.eval_weights_addr is not set (scalerl train sets it)")
    try:
        check_eval(trainer, evaluation)  # a multi-task run evaluates inline: this process scores one task
    except ValueError as e:
        raise ConfigError(str(e)) from None
    from scalerl.generator_service.evaluator_service import EVALUATOR_ID, evaluator_generator_config, run_evaluator

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s evaluator[{EVALUATOR_ID}] %(levelname)s %(message)s"
    )
    code = run_evaluator(*evaluator_generator_config(gen, wiring), trainer, evaluation)
    if code:
        sys.exit(code)
