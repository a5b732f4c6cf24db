"""Roles of `scalerl train` under srun: which task trains, which generate, and where the trainer listens.

Every task of one `srun scalerl train ...` step runs the same command; this module turns the task's slurm
variables into a plan. Pure functions of an environment dict (os.environ in production, hand-written dicts
in tests); no torch, no subprocess. Role rules and the variables read: docs/slurm.md.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, replace
from itertools import accumulate, product

from scalerl.shared.config import ConfigError

from .device_plan import Placement, slurm_step_plan

TRAINER, GENERATOR, EVALUATOR, IDLE = "trainer", "generator", "evaluator", "idle"
# The trainer's torchrun rendezvous uses the port after the four socket ports.
RDZV_PORT_OFFSET = 4
# A step's default base port, apart by job: 200 slots 10 ports apart above run.base_port's default (29600-31590 and
# their offsets, below Linux's ephemeral range from 32768).
JOB_PORT_SLOTS, JOB_PORT_STRIDE = 200, 10


@dataclass(frozen=True)
class SlurmTask:
    """What slurm tells one task. `nodes` and `tasks_per_node` are the step's, in node order."""

    procid: int
    ntasks: int
    nodes: tuple[str, ...]
    nodeid: int | None = None
    localid: int | None = None
    tasks_per_node: tuple[int, ...] | None = None
    job_id: str = ""
    restart_count: int = 0
    distribution: str = ""  # SLURM_DISTRIBUTION (srun -m): "block", "cyclic", "plane=4", "block:cyclic", ...


@dataclass(frozen=True)
class SlurmPlan:
    """This task's role. Generators are numbered 0..n_generators-1 (peer id gen-i, seed i)."""

    role: str  # TRAINER, GENERATOR, EVALUATOR or IDLE (a spare task on a trainer node: exits 0 at once)
    trainer_host: str  # the first node: the trainer binds there, generators connect there
    n_generators: int
    generator_index: int | None = None
    trainer_nodes: int = 1  # torchrun --nnodes
    node_rank: int = 0  # torchrun --node_rank of this trainer task


def active(env: Mapping[str, str]) -> bool:
    """True for a task of a multi-task srun step. SCALERL_SLURM=0 opts out (e.g. one task per job step).

    Only srun sets the step's variables (SLURM_STEP_NUM_TASKS). The batch script itself (sbatch, or salloc's shell)
    has SLURM_PROCID=0 and, with --ntasks or --ntasks-per-node, SLURM_NTASKS as well: `scalerl train` run there is
    one process that supervises the whole run on its node, as outside slurm. Read as task 0 of a step, it became a
    lone trainer waiting for generator tasks that no srun would ever start."""
    if env.get("SCALERL_SLURM", "1") == "0" or "SLURM_PROCID" not in env or "SLURM_STEP_NUM_TASKS" not in env:
        return False
    return _int(env, "SLURM_STEP_NUM_TASKS") > 1


def job_base_port(job_id: str, default: int) -> int:
    """The step's base port when the user set none. Under srun the trainer binds tcp ports on the first node, and a
    fixed default made two jobs whose first node is one host (a shared node) bind the same ports: the second failed
    after every task had started. Every task derives the same port from SLURM_JOB_ID, which a requeued job keeps;
    two jobs still meet with odds of 1 in JOB_PORT_SLOTS, and run.base_port picks one by hand."""
    if not job_id.isdigit():
        return default
    return default + JOB_PORT_STRIDE * (int(job_id) % JOB_PORT_SLOTS)


def read_task(env: Mapping[str, str]) -> SlurmTask:
    """Parse the slurm variables of this task; ConfigError names the variable that is missing or malformed."""
    ntasks_var = _first(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
    nodelist_var = _first(env, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
    if ntasks_var is None or nodelist_var is None:
        raise ConfigError("slurm: SLURM_NTASKS and SLURM_JOB_NODELIST must be set (run scalerl train under srun)")
    nodes = tuple(expand_nodelist(env[nodelist_var]))
    tpn_var = _first(env, "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
    task = SlurmTask(
        procid=_int(env, "SLURM_PROCID"),
        ntasks=_int(env, ntasks_var),
        nodes=nodes,
        nodeid=_int(env, "SLURM_NODEID") if "SLURM_NODEID" in env else None,
        localid=_int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else None,
        tasks_per_node=tuple(expand_tasks_per_node(env[tpn_var])) if tpn_var else None,
        job_id=env.get("SLURM_JOB_ID", ""),
        restart_count=_int(env, "SLURM_RESTART_COUNT", 0),
        distribution=env.get("SLURM_DISTRIBUTION", "").strip(),
    )
    if not 0 <= task.procid < task.ntasks:
        raise ConfigError(f"slurm: SLURM_PROCID={task.procid} is outside 0..{task.ntasks - 1}")
    if task.nodeid is not None and not 0 <= task.nodeid < len(nodes):
        raise ConfigError(f"slurm: SLURM_NODEID={task.nodeid} but {nodelist_var} has {len(nodes)} node(s)")
    if (
        tpn_var is not None
        and task.tasks_per_node is not None
        and (len(task.tasks_per_node) != len(nodes) or sum(task.tasks_per_node) != task.ntasks)
    ):
        raise ConfigError(
            f"slurm: {tpn_var}={env[tpn_var]!r} does not match {len(nodes)} node(s) and {task.ntasks} task(s)"
        )
    return task


def make_plan(task: SlurmTask, trainer_nodes: int = 0, evaluator: bool = False) -> SlurmPlan:
    """trainer_nodes = 0: task 0 is the trainer, every other task a generator (any layout).
    trainer_nodes = k: the first k nodes hold the trainer (torchrun; their first task launches it, the
    others idle) and every task on the remaining nodes is a generator. Needs block distribution.
    evaluator (eval.mode = "process"): the step's last task runs the evaluator instead of a generator."""
    plan = _make_plan(task, trainer_nodes)
    if not evaluator:
        return plan
    n_gen = plan.n_generators - 1
    if n_gen < 1:
        raise ConfigError(
            f"slurm: eval.mode = 'process' takes the step's last task for the evaluator, and "
            f"{task.ntasks} task(s) with run.trainer_nodes={trainer_nodes} then leave no generator task"
        )
    if task.procid == task.ntasks - 1:
        return replace(plan, role=EVALUATOR, n_generators=n_gen, generator_index=None)
    return replace(plan, n_generators=n_gen)


def _block_node(task: SlurmTask) -> int | None:
    """The node index srun's block distribution gives this task (consecutive tasks fill a node), or None where slurm
    did not say how many tasks each node holds. Every task's devices are planned so (cli/device_plan.py); a task that
    runs elsewhere (srun --distribution=cyclic) would take another task's GPUs: ConfigError."""
    layout = step_layout(task)
    if layout is None:
        return None
    # Seen alike by every task, so that the whole step refuses (a task's own SLURM_NODEID below tells only it).
    across_nodes = task.distribution.split(":")[0].split("=")[0]
    if across_nodes in ("cyclic", "plane", "arbitrary") and len(layout) > 1 and max(layout) > 1:
        raise ConfigError(
            f"slurm: SLURM_DISTRIBUTION={task.distribution}: scalerl plans each node's GPUs for srun's block "
            f"distribution (consecutive tasks fill a node); use srun --distribution=block"
        )
    starts = [0, *accumulate(layout)]
    node = bisect_right(starts, task.procid) - 1
    if task.nodeid is not None and task.nodeid != node:
        raise ConfigError(
            f"slurm: task {task.procid} runs on node index {task.nodeid}, block distribution "
            f"would put it on {node}; use srun --distribution=block"
        )
    return node


def _make_plan(task: SlurmTask, trainer_nodes: int) -> SlurmPlan:
    host = task.nodes[0]
    _block_node(task)
    if trainer_nodes == 0:
        if task.procid == 0 and task.nodeid not in (None, 0):
            raise ConfigError(
                f"slurm: task 0 runs on node {task.nodes[task.nodeid]}, not on the first node "
                f"{host}; use the default block distribution"
            )
        if task.procid == 0:
            return SlurmPlan(TRAINER, host, task.ntasks - 1)
        return SlurmPlan(GENERATOR, host, task.ntasks - 1, generator_index=task.procid - 1)
    if trainer_nodes < 0 or trainer_nodes >= len(task.nodes):
        raise ConfigError(
            f"slurm: run.trainer_nodes={trainer_nodes} leaves no generator node ({len(task.nodes)} node(s) in the step)"
        )
    if task.tasks_per_node is None:
        raise ConfigError("slurm: run.trainer_nodes >= 1 needs SLURM_STEP_TASKS_PER_NODE (run under srun)")
    starts = [0, *accumulate(task.tasks_per_node)]
    node = bisect_right(starts, task.procid) - 1
    n_gen = task.ntasks - starts[trainer_nodes]
    if node < trainer_nodes:
        role = TRAINER if task.procid == starts[node] else IDLE
        return SlurmPlan(role, host, n_gen, trainer_nodes=trainer_nodes, node_rank=node)
    return SlurmPlan(
        GENERATOR, host, n_gen, generator_index=task.procid - starts[trainer_nodes], trainer_nodes=trainer_nodes
    )


def trainer_argv(
    python: str, config_file: str, resume: bool, plan: SlurmPlan, procs_per_node: int, rdzv_port: int
) -> list[str]:
    """The trainer task's command: the trainer service itself, or torchrun over its ranks."""
    service = ["-m", "scalerl.cli", "trainer", "--config", config_file] + (["--resume"] if resume else [])
    if procs_per_node == 1 and plan.trainer_nodes <= 1:
        return [python, *service]
    rdzv = (
        [
            f"--nnodes={plan.trainer_nodes}",
            f"--node_rank={plan.node_rank}",
            f"--master_addr={plan.trainer_host}",
            f"--master_port={rdzv_port}",
        ]
        if plan.trainer_nodes > 1
        else ["--standalone"]
    )
    return [python, "-m", "torch.distributed.run", *rdzv, f"--nproc_per_node={procs_per_node}", *service]


def step_layout(task: SlurmTask) -> tuple[int, ...] | None:
    """Tasks per node of the step (block distribution), or None where slurm did not say (several nodes and no
    SLURM_STEP_TASKS_PER_NODE): then no task can know what its node's other tasks use."""
    if task.tasks_per_node is not None:
        return task.tasks_per_node
    return (task.ntasks,) if len(task.nodes) == 1 else None


def step_roles(task: SlurmTask, trainer_nodes: int, evaluator: bool) -> dict[int, str]:
    """The role of every task of the step, as each would compute its own (make_plan is pure)."""
    return {
        p: make_plan(replace(task, procid=p, nodeid=None, localid=None), trainer_nodes, evaluator).role
        for p in range(task.ntasks)
    }


def step_placements(
    task: SlurmTask,
    trainer_nodes: int,
    evaluator: bool,
    visible: list[str] | None,
    trainer_procs: int,
    per_generator: int,
    evaluator_devices: int,
    per_task_binding: bool = False,
    gpu_engines: bool = True,
    trainer_gpu: bool = True,
) -> list[Placement] | None:
    """Every task's devices (cli/device_plan.py), each node planned from the devices this task sees; None where
    the step's layout is unknown (step_layout). PlanError (exit 2) when a node's tasks need more than it has."""
    layout = step_layout(task)
    if layout is None:
        return None
    roles = step_roles(task, trainer_nodes, evaluator)
    return slurm_step_plan(
        task.nodes,
        layout,
        roles,
        visible,
        trainer_procs,
        per_generator,
        evaluator_devices,
        per_task_binding,
        gpu_engines,
        trainer_gpu,
    )


def per_task_binding(env: Mapping[str, str]) -> bool:
    """srun --gpus-per-task: slurm already gave each task only its own GPUs. Taken as such only when the task sees
    that many: with --gpu-bind=none (or a slurm that does not bind) every task sees the node's GPUs, and trusting the
    variable planned each task alone on all of them, so every task took GPU 0."""
    raw = env.get("SLURM_GPUS_PER_TASK", "").strip()
    if not raw:
        return False
    count = raw.rsplit(":", 1)[-1]  # "2" or "a100:2"
    if not count.isdigit():
        return True
    seen = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return len(seen) == int(count)


def own_devices(env: Mapping[str, str], placements: list[Placement] | None, procid: int) -> str | None:
    """This task's CUDA_VISIBLE_DEVICES: its block of its node's plan. None = leave the environment as it is: no
    GPUs, an unknown layout (step_layout), srun's own per-task binding, or a task that needs none."""
    if placements is None or per_task_binding(env):
        return None
    own = placements[procid]
    if not own.gpu and own.count:  # a CPU torch engine: hide the node's GPUs from it (a CPU-only node has none to hide)
        return "" if any(p.devices for p in placements if p.node == own.node) else None
    return ",".join(own.devices) or None


# ---------------------------------------------------------------- slurm's compact lists


def expand_nodelist(text: str) -> list[str]:
    """'node[01-03,07],gpu7' -> node01 node02 node03 node07 gpu7; several brackets multiply
    ('r[1-2]n[1-2]' -> r1n1 r1n2 r2n1 r2n2); zero padding follows the lower bound, as in slurm."""
    hosts = []
    for item in _split_top(text.strip()):
        parts = re.split(r"(\[[^\]]*\])", item)
        choices = [_expand_range(p[1:-1], text) if p.startswith("[") else [p] for p in parts]
        hosts += ["".join(combo) for combo in product(*choices)]
    if not hosts or any(not h or "[" in h or "]" in h for h in hosts):
        raise ConfigError(f"slurm: cannot parse node list {text!r}")
    return hosts


def expand_tasks_per_node(text: str) -> list[int]:
    """'2(x3),1' -> [2, 2, 2, 1]."""
    out = []
    for item in text.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if not m:
            raise ConfigError(f"slurm: cannot parse tasks per node {text!r}")
        out += [int(m[1])] * int(m[2] or 1)
    return out


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets."""
    items, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if depth < 0 or depth > 1:
            raise ConfigError(f"slurm: cannot parse node list {text!r}")
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise ConfigError(f"slurm: cannot parse node list {text!r}")
    return [i for i in items + [cur] if i]


def _expand_range(spec: str, whole: str) -> list[str]:
    out = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if not m or (m[2] is not None and int(m[2]) < int(m[1])):
            raise ConfigError(f"slurm: cannot parse node list {whole!r} (range {part!r})")
        width = len(m[1])
        out += [str(n).zfill(width) for n in range(int(m[1]), int(m[2] or m[1]) + 1)]
    return out


def _first(env: Mapping[str, str], *names: str) -> str | None:
    return next((n for n in names if env.get(n, "").strip()), None)


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    if name not in env and default is not None:
        return default
    try:
        return int(str(env[name]).strip())
    except (KeyError, ValueError):
        raise ConfigError(f"slurm: {name}={env.get(name)!r} is not an integer") from None
