"""`scalerl train` as one task of an srun step: run only this task's role (plan: cli/slurm.py).

The trainer task replaces itself with the trainer service (or torchrun over its ranks), so slurm's signals
and exit codes reach the service unchanged; a generator task runs one generator in-process. Nothing here
supervises other tasks: srun does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from scalerl.shared.wire.addresses import is_loopback

from . import slurm


def run_task(config_path, sets, run_dir, resume, max_steps, max_minutes, env=os.environ) -> int:
    from .run_config import generator_config, resolve
    from .run_setup import ensure_model, prepare_run_dir

    task = slurm.read_task(env)
    _, first = resolve(config_path, list(sets), run_dir="<slurm>")  # only to read [run]
    plan = slurm.make_plan(task, first.run.trainer_nodes)
    # Every task must agree on the run directory without talking: default to the job id, which a
    # requeued (preempted) job keeps.
    run_dir = run_dir or str(Path("runs") / f"slurm-{task.job_id or 'job'}")
    overrides = {
        "transport": "tcp",
        "host": plan.trainer_host,
        "n_generators": plan.n_generators,
        "allow_remote": first.run.allow_remote or not is_loopback(plan.trainer_host),
    }
    resolved, cfg = resolve(
        config_path,
        list(sets),
        run_dir=run_dir,
        max_steps=max_steps,
        max_minutes=max_minutes,
        run_overrides=overrides,
        eval_mode="inline",  # no srun task runs the evaluator yet: the trainer evaluates
    )
    where = f"scalerl train: slurm task {task.procid}/{task.ntasks}"
    if max_minutes or cfg.run.max_minutes:
        click.echo(f"{where}: max_minutes is not enforced under srun (use sbatch --time)", err=True)
    if plan.role == slurm.IDLE:
        click.echo(f"{where}: spare task on trainer node {plan.node_rank}; nothing to run", err=True)
        return 0
    if plan.role == slurm.TRAINER:
        config_file = prepare_run_dir(cfg, resolved, resume)
        argv = slurm.trainer_argv(
            sys.executable,
            str(config_file),
            resume,
            plan,
            cfg.run.trainer_procs,
            cfg.run.base_port + slurm.RDZV_PORT_OFFSET,
        )
        click.echo(
            f"{where}: trainer on {cfg.trainer.request_addr} for {plan.n_generators} generator(s): "
            f"{' '.join(argv[1:])}",
            err=True,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, argv)
    assert plan.generator_index is not None, "make_plan numbers every generator task"
    gen = generator_config(cfg, plan.generator_index)
    per_task = gen.vllm.tensor_parallel_size * gen.vllm.engines if gen.backend == "vllm" else 1
    device = slurm.generator_device(env, per_task)
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    click.echo(f"{where}: generator {gen.peer_id} -> {gen.request_addr}", err=True)
    ensure_model(cfg)
    from scalerl.generator_service.service import configure_logging, run_generator  # imports torch

    configure_logging(gen.peer_id)
    return run_generator(gen)
