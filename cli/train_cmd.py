"""`scalerl train` and `scalerl config show`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click

CONFIG_HELP = "TOML config (default: the built-in defaults; see scalerl.toml)."
RESUME_FLAGS_CLASH = (
    "--resume and --resume-from-scratch are alternatives: pass one (--resume-from-scratch also resumes from a "
    "checkpoint that verifies)"
)


def _resolve(config_path, sets, run_dir=None, max_steps=None, max_minutes=None, base=None):
    from .run_config import resolve

    return resolve(config_path, list(sets), run_dir=run_dir, max_steps=max_steps, max_minutes=max_minutes, base=base)


@click.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help=CONFIG_HELP)
@click.option("--run-dir", help="Run directory (default: runs/<date-time>; with --resume, the run to continue).")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a config key (repeatable).")
@click.option(
    "--resume", is_flag=True, help="Continue --run-dir from its newest checkpoint that verifies (none: exit 2)."
)
@click.option(
    "--resume-from-scratch",
    "from_scratch",
    is_flag=True,
    help="Like --resume, but with no checkpoint that verifies start over at step 0 (drops the old metrics).",
)
@click.option("--max-steps", type=click.IntRange(1), help="Stop after this many optimizer steps.")
@click.option(
    "--max-minutes", type=click.FloatRange(0), help="Stop (with a checkpoint) after this many minutes; 0: no limit."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the device plan (each process's node, GPUs, environment and command line) and start nothing.",
)
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the plan as one JSON document on stdout.")
def train(config_path, run_dir, sets, resume, from_scratch, max_steps, max_minutes, dry_run, as_json):
    """Run the ScaleRL pipeline: one trainer and N generator processes, one run directory.

    With no arguments: the built-in tiny model on the built-in addition task, on CPU. At the end it
    prints the fitted compute-performance curve and the commands to plot and forecast it.

    Every process gets its own GPUs (CUDA_VISIBLE_DEVICES): the trainer one per rank (run.trainer_procs ranks
    under torchrun), each generator its engine's, the evaluator one generator's; --dry-run prints the plan.

    \b
    Exit codes: 0 done; 1 a process failed (its name and log are printed); 2 bad config, more GPUs asked
    for than visible, no checkpoint to --resume from, or the run dir cannot be listed or written (disk full); 3 a stop
    rule ended the run (after a checkpoint; the reason is printed and in RUN/status.json);
    130/143 stopped by Ctrl-C/SIGTERM after a checkpoint (continue with --resume); before the start, nothing
    was started (a new run dir is removed; an existing one's status.json says so, if it is one this start may
    run in).
    Under srun each task runs one role instead (docs/slurm.md).
    """
    # --- slurm: under a multi-task srun step this task runs only its own role (docs/slurm.md).
    import os
    import time

    from scalerl.shared.ownership import RunLock
    from scalerl.shared.run_dir import holds_run

    from . import slurm
    from .launcher import BeforeStart, Supervisor, read_metrics
    from .progress import Progress
    from .run_config import ipc_dir
    from .run_setup import (
        SETTINGS_NAME,
        check_backend_installed,
        check_inputs,
        cleanup_sockets,
        prepare_run_dir,
        resume_changes,
        say_changes,
        stored_settings,
        user_settings,
    )
    from .run_watch import EXIT_STOP_RULE, RunWatch
    from .status_cmd import write_status
    from .trackers import check as check_trackers

    if as_json and not dry_run:
        raise click.UsageError("--json needs --dry-run")
    if resume and from_scratch:
        raise click.UsageError(RESUME_FLAGS_CLASH)
    if from_scratch and slurm.active(os.environ):
        raise click.UsageError("--resume-from-scratch is not supported under srun yet; use --resume")
    if slurm.active(os.environ):
        from .slurm_task import run_task

        code = run_task(config_path, sets, run_dir, resume, max_steps, max_minutes, dry_run=dry_run, as_json=as_json)
        if code:
            sys.exit(code)
        return
    # --- end slurm
    resume = resume or from_scratch
    if resume and not run_dir:
        raise click.UsageError("--resume needs --run-dir")
    # Until the children start, a stop signal ends the start in one line (defaults would die without a word).
    # `found`: what the run dir held besides the .lock once this start had locked it (None until then).
    # `parents`: the folders above a new run dir that do not exist yet (the lock makes them: runs/ for the default).
    cfg, existed, lock, found = None, True, None, None  # until looked at, the run dir counts as the user's
    parents: tuple[Path, ...] = ()
    with BeforeStart(
        lambda signum: _stopped_before_start(cfg, existed, lock, signum, found=found, resume=resume, parents=parents)
    ) as before:
        # A resumed run keeps the settings it was started with (RUN/settings.toml); this command's layer on top.
        base = stored_settings(Path(run_dir)) if resume else None
        if resume and base is None and (Path(run_dir) / "config.toml").is_file():
            click.echo(
                f"scalerl train: {run_dir} has no {SETTINGS_NAME} (a run of an earlier release): it resumes with this "
                "command's settings alone",
                err=True,
            )
        resolved, cfg = _resolve(config_path, sets, run_dir, max_steps, max_minutes, base=base)
        # Refused now (a key the checkpoint restores); said once every check has passed, so a refusal stays one line.
        changes = resume_changes(Path(run_dir), resolved) if resume else []
        settings = user_settings(config_path, sets, max_steps, max_minutes, base)
        out = Path(cfg.run.run_dir)
        existed = holds_run(out)
        parents = tuple(p for p in out.absolute().parents if not p.exists())
        # The plan is checked before the run dir is locked or written: an over-subscribed node exits 2 here.
        visible, commands = _plan(cfg, out / "config.toml", resume, from_scratch)
        # Before the lock, which would create the dir and its .lock; and before --dry-run, whose plan must not pass
        # a --resume that the run itself refuses.
        refuse_run_dir(out, resume, from_scratch)
        if dry_run:  # a plan, also for another node: it loads no model or task data and needs no vLLM here
            say_changes(changes)
            _print_plan(out, visible, commands, as_json)
            return
        check_trackers(cfg.run.trackers)  # their packages: here, as vLLM's, not on the node a --dry-run plans for
        check_inputs(cfg)
        check_backend_installed(cfg)
        try:
            lock = RunLock.acquire(out, "scalerl train")  # before anything is written: one live owner per run dir
            # holds_run looked seconds ago (check_inputs loads tasks and tokenizers): another start may have made this
            # dir, run in it and let go of it since. Whoever writes a run dir holds its lock, so what it holds now
            # stays as it is until this start writes: the clean-up after a stop or refusal takes only what is new.
            found = _entries(out)
            existed = existed or bool(found)
            if resume and _check_resume(out, cfg, from_scratch):
                return  # already trained to max_steps: nothing to start
            prepare_run_dir(cfg, resolved, resume, settings)
            say_changes(changes)
            ipc_dir(cfg.run.run_dir, create=True)  # only now: a refused start leaves no socket dir behind either
            sup = Supervisor(out, commands, lock)
        except Exception:
            # A refusal after the lock (a tcp port in use, a full disk, the tiny model's build) takes out what this
            # start wrote, as a stop before the start does: no new run dir is left, which a later start would take for
            # an existing run, and a user's empty dir is empty again.
            _discard_new(cfg, existed, lock, found, parents)
            raise
        sup.install_signals()  # from here a stop is the supervisor's: a checkpoint, then status.json
        before.hand_over()
    sup.start()
    click.echo(f"scalerl train: run dir {out}; logs in {out / 'logs'}", err=True)
    progress, t0 = Progress(), time.monotonic()
    code, reason = 1, "scalerl train itself failed"
    write_status(out, None)
    watch = RunWatch(out, cfg.run, resume, len(read_metrics(out / "metrics.jsonl")))
    try:
        code, reason = _supervise(sup, cfg, out, progress, t0, watch)
    finally:
        progress.close()
        sup.shutdown()
        cleanup_sockets(cfg)
        # After the trainer's last evaluation and checkpoint: the final refit, then the end record.
        watch.close(read_metrics(out / "metrics.jsonl"), final_refit=code in (0, EXIT_STOP_RULE))
        write_status(out, code, reason, cfg.trainer.max_steps)
    _report(out, cfg)
    if code:
        sys.exit(code)


def _stopped_before_start(
    cfg,
    existed: bool,
    lock,
    signum: int,
    found: set[str] | None = None,
    resume: bool = False,
    parents: tuple[Path, ...] = (),
) -> NoReturn:
    """SIGINT/SIGTERM before any child started (cli/launcher.py BeforeStart): say so in one line and exit 128 +
    signal. A run dir this start created holds nothing but what it wrote (the resolved config, its secret, the lock):
    that is taken out and the dir removed, as a refused start leaves none; so is one that held no run (holds_run: a
    bare .lock). An existing one (--resume, a reused dir, an empty dir the user made) is kept, and if this start owns
    it and may run in it (check_fresh), its status.json records the stop as a later stop is recorded (`scalerl status`
    reads it); never that of a run holding metrics (check_fresh), such as another start's made there while this one
    checked its inputs."""
    from scalerl.shared.run_dir import RunDirError

    from .launcher import stop_reason
    from .run_setup import cleanup_sockets
    from .status_cmd import write_status

    code, reason = 128 + signum, stop_reason(signum)
    if cfg is None:  # still reading the config: nothing written yet
        click.echo(f"scalerl train: {reason}: no process was started and nothing was written", err=True)
        sys.exit(code)
    out = Path(cfg.run.run_dir)
    recorded = ""
    if existed and lock is not None and _starts_here(out, resume):  # never another owner's status.json
        cleanup_sockets(cfg)
        try:
            write_status(out, code, reason, cfg.trainer.max_steps)
            recorded = ", its status.json says so"
        except RunDirError as e:  # disk full, read-only: the stop is still a stop (128 + signal), not bad input (2)
            recorded = f", but its status.json could not be written: {e}"
    else:
        _discard_new(cfg, existed, lock, found, parents)
    kept = f"no run dir left at {out}" if not out.exists() else f"{out} kept{recorded}"
    click.echo(f"scalerl train: {reason}: no process was started; {kept}", err=True)
    sys.exit(code)


def _starts_here(out: Path, resume: bool) -> bool:
    """Whether the run in `out` is this start's: one it may start or resume (check_fresh), not another's finished run
    whose status.json a stop would replace."""
    from scalerl.shared.config import ConfigError
    from scalerl.shared.run_dir import check_fresh

    try:
        check_fresh(out, resume)
    except ConfigError:
        return False
    return True


def _discard_new(cfg, existed: bool, lock, found: set[str] | None, parents: tuple[Path, ...] = ()) -> None:
    """Undo what a start that ends before its processes run wrote into its run dir: the files prepare_run_dir made
    that were not there when it took the lock (`found`), then its .lock if nothing else is left, then the dir if
    nothing is left and it held no run before (holds_run: an empty dir is the user's, kept), and the empty folders
    above it that the lock made (`parents`). Nothing is removed recursively: whatever was there before, or may be
    another start's, stays."""
    from scalerl.shared.ownership import LOCK_NAME, SECRET_NAME

    from .run_setup import SETTINGS_NAME, cleanup_sockets

    # What prepare_run_dir (cli/run_setup.py) writes before any process runs.
    written = (SECRET_NAME, "config.toml", SETTINGS_NAME)
    out = Path(cfg.run.run_dir)
    if lock is not None:  # the socket dir is made under the lock: without it, it may be a live owner's
        cleanup_sockets(cfg)
    if not out.is_dir():
        return
    # Without our lock (stopped between RunLock's mkdir and its .lock, or refused by a live owner's) the dir may be
    # another start's, which may put its .lock there any moment: only rmdir, which removes it while it is empty.
    if lock is not None or _locked_here(out):
        for name in written:
            # None: stopped before it looked, so before it wrote; UNLISTED: what was there is unknown, so none is ours.
            if found is not None and UNLISTED not in found and name not in found:
                (out / name).unlink(missing_ok=True)
        # Our .lock, and not a bare .lock that a later start would count as new (holds_run) and remove with the dir.
        if _entries(out, lock_too=True) == {LOCK_NAME}:
            (out / LOCK_NAME).unlink(missing_ok=True)
    if not existed:
        # Then the folders the lock made above it (runs/ of the default runs/<time>), nearest first, while empty.
        for d in (out, *parents):
            try:
                d.rmdir()
            except OSError:
                break


UNLISTED = "<unlisted>"  # _entries of a dir that cannot be listed


def _entries(out: Path, lock_too: bool = False) -> set[str]:
    """The names in run dir `out` (without its .lock unless `lock_too`)."""
    from scalerl.shared.ownership import LOCK_NAME

    try:
        names = {p.name for p in out.iterdir()}
    except OSError:
        return {UNLISTED}  # what it holds is unknown: as if it held something, so that nothing there is removed
    return names if lock_too else names - {LOCK_NAME}


def _locked_here(out: Path) -> bool:
    """A run dir holding nothing but a .lock whose live owner is this process: the stop came inside RunLock.acquire,
    after it took the lock but before `lock` was set."""
    import os

    from scalerl.shared.ownership import LOCK_NAME, owner_of

    if _entries(out, lock_too=True) != {LOCK_NAME}:
        return False
    owner = owner_of(out)
    return owner is not None and owner.get("pid") == os.getpid()


def _plan(cfg, config_file: Path, resume: bool, from_scratch: bool):
    """(visible devices, the processes with devices, environment and command line) of a run on this node."""
    import dataclasses
    import os

    from .device_plan import cuda_env, local_asks, plan_node, visible_devices
    from .launcher import child_commands

    visible = visible_devices(os.environ)
    evaluator = cfg.wiring.eval_devices if cfg.eval.mode == "process" else 0
    gpu_engines = cfg.generator.backend == "vllm"  # the built-in torch engine runs on CPU and takes no GPU
    asks = local_asks(
        cfg.run.trainer_procs,
        cfg.run.n_generators,
        cfg.wiring.generator_devices,
        evaluator,
        gpu_engines,
        trainer_gpu=cfg.trainer.device != "cpu",  # trainer.device = "cpu" on a GPU node: its ranks take no GPU
    )
    placements = [dataclasses.replace(p, env=cuda_env(p, visible)) for p in plan_node(visible, asks)]
    loopback = not cfg.run.allow_remote
    return visible, child_commands(config_file, placements, resume, from_scratch, loopback, seed=cfg.generator.seed)


def _print_plan(out: Path, visible, commands, as_json: bool) -> None:
    """--dry-run: the plan on stdout, text or one JSON document (docs/slurm.md shows both)."""
    import json
    import shlex

    from .device_plan import total_devices

    doc = {
        "run_dir": str(out),
        "visible_devices": visible,
        "devices_asked": sum(len(c.devices) for c in commands),
        "gpu_hours_devices": total_devices(commands),
        "processes": [c.to_json() for c in commands],
    }
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    seen = "none (CPU only)" if visible is None else f"{len(visible)} ({','.join(visible)})"
    click.echo(
        f"devices visible: {seen}; asked for: {doc['devices_asked']}; gpu_hours counts {doc['gpu_hours_devices']}"
    )
    for c in commands:
        devices = ",".join(c.devices) or "-"
        ranks = f" ranks {c.ranks}" if c.ranks > 1 else ""
        click.echo(f"{c.name:<10} node {c.node}  devices {devices}{ranks}")
        click.echo(f"  env: {' '.join(f'{k}={shlex.quote(v)}' for k, v in c.env.items())}")
        click.echo(f"  cmd: {shlex.join(c.argv)}")


def refuse_run_dir(out: Path, resume: bool, from_scratch: bool) -> None:
    """The refusals that need no lock, made before it is taken so that they leave the file system as it was:
    --run-dir naming a file, or a dir this process cannot list (no permission, a name too long: what it holds could
    not be told from a new run's); --resume of a run dir that does not exist (a
    mistyped path, not a run to start) or that has no checkpoint that verifies; a fresh start (no --resume) in a run
    dir that already holds a run (check_fresh, which prepare_run_dir asks again under the lock). A run dir with a live
    owner is left to RunLock, which names the owner (and whose checkpoints may still be on their way)."""
    from scalerl.shared.ownership import owner_of
    from scalerl.shared.run_dir import RunDirError, check_fresh

    try:
        if out.exists() and not out.is_dir():
            raise RunDirError(f"{out}: not a directory (--run-dir names the run directory)")
        next(out.iterdir(), None)
    except FileNotFoundError:
        pass  # a new run dir: the lock makes it
    except OSError as e:
        raise RunDirError(f"{out}: cannot use it as the run directory: {e.strerror or e}") from None
    if not resume:
        if owner_of(out) is None:
            check_fresh(out, resume)
        return
    if not out.exists():
        if from_scratch:
            return  # documented: with no checkpoint it starts over, and a new run dir has none
        raise RunDirError(f"{out}: the run directory does not exist: nothing to --resume")
    if from_scratch or owner_of(out) is not None:
        return
    from scalerl.trainer_service.checkpoint import find_resumable, nothing_to_resume

    root = out / "checkpoints"
    chosen, skipped = find_resumable(root)
    if chosen is None:  # the one line names every checkpoint and why: no separate "skipping" lines before it
        raise RunDirError(nothing_to_resume(root, skipped))


def _check_resume(out: Path, cfg, from_scratch: bool) -> bool:
    """Before any process starts: which checkpoint --resume takes, which it skips and why, and what the metrics
    lack; refuse (exit 2) when none verifies. The trainer decides again after a full load (docs/run-dir.md).
    True when the checkpoint is already at max_steps (said in one line; nothing to run)."""
    from scalerl.shared.run_dir import MetricsLog, RunDirError
    from scalerl.trainer_service.checkpoint import find_resumable, nothing_to_resume

    root = out / "checkpoints"
    chosen, skipped = find_resumable(root)
    if chosen is None and not from_scratch:  # damaged since refuse_run_dir looked: the same one line
        raise RunDirError(nothing_to_resume(root, skipped))
    for path, reason in skipped:
        click.echo(f"scalerl train: resume: skipping {path.name}: {reason}", err=True)
    if chosen is None:
        click.echo(
            "scalerl train: no checkpoint to resume from; starting over at step 0 (--resume-from-scratch empties "
            "metrics.jsonl)",
            err=True,
        )
        return False
    step = int(chosen.name.removeprefix("step-"))
    done = step >= cfg.trainer.max_steps
    if not done:
        click.echo(f"scalerl train: resuming from {chosen} (step {step})", err=True)
    for problem in MetricsLog.check(out / "metrics.jsonl", step, cfg.eval.every) if step > 0 else []:
        click.echo(f"scalerl train: warning: {problem}", err=True)
    if done:
        click.echo(
            f"scalerl train: {out} is already at step {step} (max_steps {cfg.trainer.max_steps}): nothing to train; "
            f"pass --max-steps above {step} to go on",
            err=True,
        )
    return done


def _supervise(sup, cfg, out: Path, progress, t0: float, watch) -> tuple[int, str]:
    """Watch the children until the run ends; returns the exit code of `scalerl train` and why it ends."""
    import signal
    import time

    from .launcher import read_metrics
    from .progress import VERIFIER_ERROR_RATE, VERIFIER_MIN_SAMPLES, summary, verifier_error_rate
    from .run_watch import EXIT_STOP_RULE

    warned = False
    while True:
        records = read_metrics(out / "metrics.jsonl")
        stop = watch.tick(records)  # the refit runs in its own low-priority process: this returns at once
        progress.update({**summary(records, cfg.trainer.max_steps, t0), "forecast": watch.latest})
        rate, n = verifier_error_rate(records)
        if not warned and n >= VERIFIER_MIN_SAMPLES and rate > VERIFIER_ERROR_RATE:
            warned = True
            click.echo(
                f"scalerl train: warning: the verifier failed on {rate:.0%} of {n} samples (they score 0); "
                f"see {out / 'logs'} for its errors",
                err=True,
            )
        if stop:
            click.echo(f"scalerl train: {stop}; checkpointing and stopping", err=True)
            return EXIT_STOP_RULE, stop
        if sup.stop_signal is not None:
            return 128 + sup.stop_signal, f"stopped by {signal.Signals(sup.stop_signal).name}"
        if cfg.run.max_minutes and time.monotonic() - t0 > 60 * cfg.run.max_minutes:
            click.echo(f"scalerl train: --max-minutes {cfg.run.max_minutes:g} reached; checkpointing", err=True)
            return 0, f"--max-minutes {cfg.run.max_minutes:g} reached"
        exited = sup.poll()
        if exited is not None:
            name, rc = exited
            if name == "trainer" and rc == 0:
                return 0, "the trainer finished"
            # Not the evaluator: the versions it was asked for are gone with it (only the newest stays published).
            if name.startswith("gen-") and cfg.run.restart_generators:
                click.echo(
                    f"scalerl train: {name} exited with code {rc}: {sup.first_error(name)}; restarting it", err=True
                )
                sup.restart(name)
                continue
            why = f"{name} exited with code {rc}: {sup.first_error(name)}"
            click.echo(f"scalerl train: {why} (log: {out / 'logs' / (name + '.log')})", err=True)
            return (2 if rc == 2 else 1), why
        time.sleep(0.5)


def _report(out: Path, cfg) -> None:
    """The fitted curve of the run, and the next commands."""
    from scalerl.curvefit.errors import InputError
    from scalerl.curvefit.fit import FitOptions, fit_curves, parse_r0
    from scalerl.curvefit.readers import ReadOptions, read_sources

    metrics = out / "metrics.jsonl"
    if not metrics.exists() or '"kind":"eval"' not in metrics.read_text(errors="replace").replace(" ", ""):
        click.echo("scalerl train: no evaluation finished: no curve to fit", err=True)
        return
    try:
        curves = read_sources([out], ReadOptions())
    except (InputError, ValueError) as e:
        click.echo(f"scalerl train: no curve to fit yet ({e})", err=True)
        return
    fitted = 0
    for curve in curves:  # one per task in a multi-task run
        what = f" of {curve.name.rpartition('/')[2]}" if len(curves) > 1 else ""
        try:
            c = cfg.curvefit
            fit = fit_curves(
                [curve],
                FitOptions(r0=parse_r0(c.r0), bound=c.bound, level=c.level, n_boot=c.n_boot, exclude_before=0.0),
            )
        except (InputError, ValueError) as e:
            click.echo(f"scalerl train: no curve{what} to fit yet ({e})", err=True)
            continue
        p = fit.params
        lo, hi = fit.ci("A")
        click.echo(f"held-out pass rate{what} {curve.y[0]:.3f} -> {curve.y[-1]:.3f} over {len(curve)} evaluations")
        click.echo(
            f"fit{what}: A = {p.A:.3f} [{lo:.3f}, {hi:.3f}], B = {p.B:.2f}, C_mid = {p.c_mid:.3g} GPU-hours, "
            f"R0 = {p.R0:.3f}, R2 = {fit.r2:.3f}"
        )
        for w in fit.warnings:
            click.echo(f"warning: {w}", err=True)
        fitted += 1
    if fitted:  # with no fit both would exit 2 ("too few points")
        click.echo(f"next: scalerl plot {out} -o {out / 'curve.png'} --exclude-before 0")
        click.echo(f"      scalerl forecast {out} --budget {10 * float(curve.x.max()):.3g} --exclude-before 0")


@click.group()
def config():
    """Inspect the resolved configuration."""


@config.command("show")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help=CONFIG_HELP)
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a config key (repeatable).")
def show(config_path, sets):
    """Print the resolved config (every default filled in) as TOML; a comment after each value says what set it:
    --set, the config file, a default of the built-in model or of the paper's recipe (a user's run.model), a
    plain default, or scalerl train itself (addresses, the run dir, keys forwarded from [run])."""
    from .run_config import render_with_sources, unset_keys

    given = _given_run_dir(config_path, sets)
    # The file's or --set's run dir is shown as given; with none, scalerl train picks it (--run-dir, else
    # runs/<date-time>): a placeholder stands for it, and its comment says so.
    resolved, cfg = _resolve(config_path, sets, run_dir=None if given else RUN_DIR_PLACEHOLDER)
    sources = dict(cfg.sources)
    if not given:
        sources[("run", "run_dir")] = RUN_DIR_PLACEHOLDER_SOURCE
    unset = unset_keys(cfg, list(resolved))
    if resolved.get("trainer", {}).get("tasks"):
        # A multi-task run reads [[trainer.tasks]] only: the single-task table's defaults are no setting of it.
        resolved["trainer"].pop("task", None)
        unset = [key for key in unset if key[:2] != ("trainer", "task")]
    click.echo(render_with_sources(resolved, sources, unset), nl=False)


RUN_DIR_PLACEHOLDER = "<run_dir>"
RUN_DIR_PLACEHOLDER_SOURCE = "placeholder: scalerl train's --run-dir, else runs/<date-time>"


def _given_run_dir(config_path, sets) -> bool:
    """Whether the config file or --set names a run dir (a non-empty run.run_dir). A file or --set that cannot be
    read counts as none: resolve then refuses it in its own words."""
    from scalerl.shared.config import ConfigError, apply_sets, load_toml

    try:
        run = apply_sets(load_toml(config_path) if config_path is not None else {}, list(sets)).get("run", {})
    except (ConfigError, AttributeError, TypeError, ValueError):
        return False
    return isinstance(run, dict) and run.get("run_dir") not in (None, "")
