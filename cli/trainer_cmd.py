"""`scalerl trainer`: run the trainer service alone (slurm scripts, torchrun)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="TOML file; its [trainer], [eval] and [wiring] tables are read.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a [trainer], [eval] or [wiring] key (repeatable).",
)
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint that verifies; none: exit 2.")
@click.option(
    "--resume-from-scratch",
    "from_scratch",
    is_flag=True,
    help="Like --resume, but with no checkpoint that verifies start over at step 0 (drops the old metrics).",
)
def trainer(config_path, sets, resume, from_scratch):
    """Run the trainer service: binds the sockets, drives generators, trains, evaluates, checkpoints.

    Under torchrun every rank runs this command; rank 0 talks to the generators.
    Exit codes: 0 done; 1 failure (e.g. a dead generator); 2 bad config, task file, verifier or model directory
    (checked before the run dir is locked), no checkpoint to resume from, or the run directory cannot be written
    (disk full); 130/143 stopped by SIGINT/SIGTERM after writing a checkpoint.
    """
    import logging
    import os
    import sys

    from scalerl.shared.config import ConfigError, load_sections
    from scalerl.shared.eval_config import EvalConfig
    from scalerl.shared.wiring import RunWiring
    from scalerl.trainer_service.config import TrainerConfig, check_wiring

    from .defaults import device_problem, section_defaults
    from .run_setup import check_standalone_inputs
    from .train_cmd import RESUME_FLAGS_CLASH, refuse_run_dir

    if resume and from_scratch:
        raise click.UsageError(RESUME_FLAGS_CLASH)
    classes = {"trainer": TrainerConfig, "eval": EvalConfig, "wiring": RunWiring}
    cfg, evaluation, wiring = load_sections(config_path, classes, list(sets), defaults=section_defaults)
    try:
        check_wiring(cfg, wiring, evaluation)
        # The trainer binds every address; without them it would fail only after the lock and the torch import.
        wiring.check_addresses()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    problem = device_problem(cfg.device)
    if problem:
        raise ConfigError(problem)
    if int(os.environ.get("RANK", "0")) == 0:
        from scalerl.shared.ownership import RunLock

        # As scalerl train does: a run dir that is a file, or --resume of one that does not exist or holds no
        # checkpoint that verifies, is one line before the lock (which would create the dir) and the trainer's log.
        refuse_run_dir(Path(cfg.run_dir), resume or from_scratch, from_scratch)
        # What scalerl train checks before it starts anything: a bad task file or verifier, a verifier the task's
        # answers do not fit, a bad model directory. Without it the trainer took the lock, wrote its run dir, and
        # found them after the torch import, or never (the code verifier on the addition task trained on rewards 0).
        check_standalone_inputs(_as_run(cfg, evaluation), "trainer.model")

        # Rank 0 writes the run dir, so it must own it; taken before the slow torch import so that a second
        # owner is refused at once. The lock's descriptor stays open, and the lock held, until this process exits.
        RunLock.acquire(Path(cfg.run_dir), "scalerl trainer")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    from scalerl.shared.errors import one_line
    from scalerl.shared.run_dir import RunDirError
    from scalerl.trainer_service.components.dispatcher import PeerError
    from scalerl.trainer_service.service import run_trainer

    try:
        code = run_trainer(cfg, wiring, evaluation, resume=resume, from_scratch=from_scratch)
    except PeerError as e:  # a peer failed the run (e.g. every generator died)
        click.echo(f"scalerl trainer: error: {e}", err=True)
        sys.exit(1)
    except RunDirError as e:  # the last line of the trainer's log, which `scalerl train` repeats
        click.echo(f"scalerl trainer: error: {one_line(e)}", err=True)
        sys.exit(2)
    if code:
        sys.exit(code)


def _as_run(cfg, evaluation):
    """The trainer's sections seen as the resolved run config that check_inputs reads: the model is trainer.model,
    and no generator is started here (only inline evaluation runs an engine in this process)."""
    from types import SimpleNamespace

    return SimpleNamespace(trainer=cfg, run=SimpleNamespace(model=cfg.model), eval=evaluation, generator=None)
