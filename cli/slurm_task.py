"""`scalerl train` as one task of an srun step: run only this task's role (plan: cli/slurm.py).

The trainer task replaces itself with the trainer service (or torchrun over its ranks), so slurm's signals
and exit codes reach the service unchanged; a generator task runs one generator in-process. Nothing here
supervises other tasks: srun does.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from scalerl.shared.wire.addresses import is_loopback

from . import slurm


def run_task(
    config_path, sets, run_dir, resume, max_steps, max_minutes, env=os.environ, dry_run=False, as_json=False
) -> int:
    """Run this task's role; returns its exit code (the trainer's role does not return: it execs the trainer).

    Until the role's process is up, SIGTERM (slurm preemption, scancel, `--signal`) and SIGINT end the task in one
    line with exit 143 / 130, as they end `scalerl train` (cli/launcher.py stop_before_start); Python's default
    would end it without a word."""
    from .launcher import BeforeStart

    where = "scalerl train: slurm task"  # with the task's numbers once read
    # No hand_over: the handlers from before come back before the role starts, as on every other way out. The
    # generator and the evaluator take SIGTERM/SIGINT over as they start (exit 0, stopped on request), and put back
    # what they found when they return: Python's own, not a handler raising StoppedBeforeStart after the start.
    with BeforeStart(lambda signum: _stopped_before_start(where, signum)):
        task = slurm.read_task(env)
        where = f"scalerl train: slurm task {task.procid}/{task.ntasks}"
        start = _prepare(task, where, config_path, sets, run_dir, resume, max_steps, max_minutes, env, dry_run, as_json)
    return start()


# [run] keys that only `scalerl train`'s own supervisor acts on (its poll loop, cli/run_watch.py). Under srun nothing
# supervises the step: the trainer task execs `scalerl trainer`, which has none of them. Changed from their defaults
# they are refused (they would be accepted and never act); run.live_forecast, on by default, only gets a warning.
SUPERVISOR_ONLY = (
    "stop_if_target_unreachable",
    "stop_if_gain_below",
    "budget",
    "target",
    "trackers",
    "restart_generators",
)
NO_LIVE_FORECAST = (
    "the live forecast does not run under srun (no forecast.jsonl); "
    "run `scalerl forecast {run_dir} --budget X` afterwards"
)


def refuse_supervisor_only(run) -> None:
    """ConfigError (exit 2) naming the first SUPERVISOR_ONLY key of `run` ([run]) changed from its default."""
    import dataclasses
    import json

    from scalerl.shared.config import ConfigError

    defaults = {f.name: f.default for f in dataclasses.fields(run)}
    for key in SUPERVISOR_ONLY:
        value = getattr(run, key)
        if value != defaults[key]:
            shown = json.dumps(list(value) if isinstance(value, tuple) else value)  # as TOML writes it
            raise ConfigError(
                f"slurm: run.{key} = {shown} acts only under scalerl train's own supervisor, which does not run "
                f"under srun (each task runs one role): remove it, or run scalerl train outside srun"
            )


def _stopped_before_start(where: str, signum: int) -> NoReturn:
    """One line and exit 128 + signal. The run dir is kept: it is the step's (every task's, and a requeued job's),
    and the other tasks may be waiting on its secret."""
    from .launcher import stop_reason

    click.echo(f"{where}: {stop_reason(signum)}: no process was started", err=True)
    sys.exit(128 + signum)


def _prepare(
    task, where: str, config_path, sets, run_dir, resume, max_steps, max_minutes, env, dry_run, as_json
) -> Callable[[], int]:
    """Everything before the role's process starts: read the config, plan the step, check the inputs, prepare the
    run dir and the model. Returns what starts the role (a callable returning its exit code)."""
    from .device_plan import visible_devices
    from .run_config import SOURCE_FILE, SOURCE_SET, generator_config, resolve
    from .run_setup import (
        SETTINGS_NAME,
        check_inputs,
        ensure_model,
        prepare_run_dir,
        resume_changes,
        say_changes,
        stored_settings,
        user_settings,
    )

    # Every task must agree on the run directory without talking: default to the job id, which a
    # requeued (preempted) job keeps.
    run_dir = run_dir or str(Path("runs") / f"slurm-{task.job_id or 'job'}")
    # A resumed run keeps the settings it was started with (RUN/settings.toml), this command's on top, as outside
    # srun. Every task reads them; the trainer task may rewrite the file meanwhile (atomically), which changes no
    # task's result: this command's layer over the rewritten file resolves to what it did over the old one.
    base = stored_settings(Path(run_dir)) if resume else None
    if resume and base is None and (Path(run_dir) / "config.toml").is_file() and task.procid == 0:
        click.echo(
            f"{where}: {run_dir} has no {SETTINGS_NAME} (a run of an earlier release): it resumes with this "
            "command's settings alone",
            err=True,
        )
    _, first = resolve(config_path, list(sets), run_dir="<slurm>", eval_mode="inline", base=base)  # to read [run]
    refuse_supervisor_only(first.run)
    # eval.mode = "process" (set by the user; srun's default is inline): the last task is the evaluator.
    evaluator = first.eval.mode == "process"
    plan = slurm.make_plan(task, first.run.trainer_nodes, evaluator)
    overrides = {
        "transport": "tcp",
        "host": plan.trainer_host,
        "n_generators": plan.n_generators,
        "allow_remote": first.run.allow_remote or not is_loopback(plan.trainer_host),
    }
    if first.sources.get(("run", "base_port")) not in (SOURCE_FILE, SOURCE_SET):
        overrides["base_port"] = slurm.job_base_port(task.job_id, first.run.base_port)
    resolved, cfg = resolve(
        config_path,
        list(sets),
        run_dir=run_dir,
        max_steps=max_steps,
        max_minutes=max_minutes,
        run_overrides=overrides,
        eval_mode="inline",  # unless the user asks for the evaluator task (eval.mode = "process")
        base=base,
    )
    # Refused in every task, with the same line, before anything starts: a key the checkpoint restores.
    changes = resume_changes(Path(run_dir), resolved) if resume else []
    if task.procid == 0:
        say_changes(changes, where)
    # Before anything starts: every task plans the whole step the same way, and a node whose tasks need more GPUs
    # than it has fails here in every task, with the same line.
    placements = slurm.step_placements(
        task,
        first.run.trainer_nodes,
        evaluator,
        visible_devices(env),
        cfg.run.trainer_procs,
        cfg.wiring.generator_devices,
        cfg.wiring.eval_devices,
        slurm.per_task_binding(env),
        gpu_engines=cfg.generator is not None and cfg.generator.backend == "vllm",  # the torch engine runs on CPU
        trainer_gpu=cfg.trainer.device != "cpu",
    )
    config_file = Path(cfg.run.run_dir) / "config.toml"

    def trainer_argv_of(task_plan) -> list[str]:
        rdzv_port = cfg.run.base_port + slurm.RDZV_PORT_OFFSET
        return slurm.trainer_argv(sys.executable, str(config_file), resume, task_plan, cfg.run.trainer_procs, rdzv_port)

    def argv_of_task(p: int) -> list[str]:
        """Task p's trainer command as task p computes it (its own torchrun --node_rank), for the printed plan."""
        other = dataclasses.replace(task, procid=p, nodeid=None, localid=None)
        return trainer_argv_of(slurm.make_plan(other, first.run.trainer_nodes, evaluator))

    trainer_argv = trainer_argv_of(plan)
    if dry_run:  # only here: in a real step this step's own trainer may have written metrics.jsonl already
        from scalerl.shared.run_dir import check_fresh

        check_fresh(config_file.parent, resume)  # what the trainer task's prepare_run_dir refuses, refused here too
    if cfg.run.live_forecast and task.procid == 0:  # on by default: said once for the step (and its plan), not refused
        click.echo(f"{where}: {NO_LIVE_FORECAST.format(run_dir=cfg.run.run_dir)}", err=True)
    if dry_run:
        if task.procid == 0:  # one copy of the step's plan, not one per task
            _print_step(task, placements, env, argv_of_task, as_json)
        return lambda: 0
    if max_minutes or cfg.run.max_minutes:
        click.echo(f"{where}: max_minutes is not enforced under srun (use sbatch --time)", err=True)
    if plan.role == slurm.IDLE:
        click.echo(f"{where}: spare task on trainer node {plan.node_rank}; nothing to run", err=True)
        return lambda: 0
    device = slurm.own_devices(env, placements, task.procid)
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    if plan.role == slurm.TRAINER:
        check_inputs(cfg)  # the generator tasks check their backend on their own nodes
        prepare_run_dir(cfg, resolved, resume, user_settings(config_path, sets, max_steps, max_minutes, base))
        return lambda: _exec_trainer(where, cfg, plan, device, trainer_argv)
    if plan.role == slurm.EVALUATOR:
        return _prepare_evaluator(cfg, where, device)
    assert plan.generator_index is not None, "make_plan numbers every generator task"
    gen = generator_config(cfg, plan.generator_index)
    click.echo(f"{where}: generator {gen.peer_id} -> {cfg.wiring.request_addr}{_on(device)}", err=True)
    ensure_model(cfg)
    from scalerl.generator_service.service import configure_logging, run_generator  # imports torch

    configure_logging(gen.peer_id)
    return lambda: run_generator(gen, cfg.wiring)


def _exec_trainer(where: str, cfg, plan, device: str | None, trainer_argv: list[str]) -> NoReturn:
    """Replace this task with the trainer (or torchrun over its ranks): slurm's signals then reach it unchanged."""
    from .launcher import without_dist_env

    click.echo(
        f"{where}: trainer on {cfg.wiring.request_addr} for {plan.n_generators} generator(s)"
        f"{_on(device)}: {' '.join(trainer_argv[1:])}",
        err=True,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    # Without a rendezvous inherited from the shell (cli/launcher.py DIST_ENV): torchrun sets its own; SLURM_* stay.
    os.execve(sys.executable, trainer_argv, without_dist_env(os.environ))


def _on(device: str | None) -> str:
    return f" on CUDA_VISIBLE_DEVICES={device}" if device is not None else ""


def _prepare_evaluator(cfg, where: str, device: str | None) -> Callable[[], int]:
    """The evaluator task: `scalerl evaluator` in-process, on the trainer's evaluation weight channel."""
    import logging

    from .run_setup import ensure_model

    assert cfg.generator is not None, "resolve fills the generator section"
    click.echo(f"{where}: evaluator -> {cfg.wiring.eval_weights_addr}{_on(device)}", err=True)
    ensure_model(cfg)
    from scalerl.generator_service.evaluator_service import EVALUATOR_ID, evaluator_generator_config, run_evaluator

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s evaluator[{EVALUATOR_ID}] %(levelname)s %(message)s"
    )
    return lambda: run_evaluator(*evaluator_generator_config(cfg.generator, cfg.wiring), cfg.trainer, cfg.eval)


def _print_step(task, placements, env, trainer_argv: Callable[[int], list[str]], as_json: bool) -> None:
    """--dry-run under srun: every task's role, node, devices, environment and command line (task 0 prints it)."""
    import json
    import shlex

    from .device_plan import total_devices

    # The trainer task execs torchrun (or the trainer); every other task runs this same srun command in-process.
    own = [sys.executable, "-m", "scalerl.cli", *[a for a in sys.argv[1:] if a not in ("--dry-run", "--json")]]
    rows: list[dict[str, Any]] = []
    layout = slurm.step_layout(task)
    nodes = [n for n, k in zip(task.nodes, layout or (), strict=False) for _ in range(k)]
    for p in range(task.ntasks):
        placed = placements[p] if placements is not None else None
        role = placed.role if placed else ("trainer" if p == 0 else "?")
        device = slurm.own_devices(env, placements, p)
        rows.append(
            {
                "name": f"task-{p}",
                "role": role,
                "node": nodes[p] if p < len(nodes) else None,
                "devices": list(placed.devices) if placed else [],
                "device_count": placed.count if placed else None,
                "ranks": placed.ranks if placed else 1,
                "env": {} if device is None else {"CUDA_VISIBLE_DEVICES": device},
                "argv": trainer_argv(p) if role == "trainer" else [] if role == "idle" else own,
            }
        )
    doc = {
        "slurm": True,
        "nodes": list(task.nodes),
        "tasks_per_node": list(layout) if layout else None,
        "per_task_binding": slurm.per_task_binding(env),
        "gpu_hours_devices": total_devices(placements) if placements is not None else None,
        "processes": rows,
    }
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(
        f"srun step: {task.ntasks} task(s) on {len(task.nodes)} node(s); gpu_hours counts {doc['gpu_hours_devices']}"
    )
    for r in rows:
        click.echo(f"{r['name']:<8} {r['role']:<9} node {r['node']}  devices {','.join(r['devices']) or '-'}")
        click.echo(f"  env: {' '.join(f'{k}={v}' for k, v in r['env'].items())}")
        click.echo(f"  cmd: {shlex.join(r['argv'])}")
