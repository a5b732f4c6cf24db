"""The device plan of a run: which GPUs each process of `scalerl train` gets, on which node.

One pure planner, `plan_node`, maps a node's visible devices and the process counts to disjoint device blocks, in a
fixed order: the trainer's ranks first, then each generator's tensor_parallel_size x engines, then the evaluator.
`scalerl train` gives every child its block as CUDA_VISIBLE_DEVICES (so a child's cuda:0 is its first own GPU and a
torchrun rank's cuda:LOCAL_RANK its own); under srun each task takes its block on its node (`slurm_task_devices`).

The per-process counts are the ones gpu_hours charges (trainer_service/components/ledger.py): a trainer rank one
device, a generator `GeneratorConfig.devices` (= wiring.generator_devices), the evaluator wiring.eval_devices. On
a CPU-only node there are no devices: every process still counts (as "cpu-process") and the children keep their
environment as it is: an explicit CUDA_VISIBLE_DEVICES="" would change nothing for torch on CPU, and leaving it alone
keeps a CPU run identical to what it was before there was a plan.

No torch at module load: `visible_devices` imports it only when CUDA_VISIBLE_DEVICES is unset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from scalerl.shared.config import ConfigError

CUDA_ENV = "CUDA_VISIBLE_DEVICES"
LOCAL_NODE = "localhost"


class PlanError(ConfigError):
    """An over-subscribed or overlapping plan; the CLI exits 2 before any process starts."""


@dataclass(frozen=True)
class Ask:
    """One process's claim: `count` devices (gpu_hours counts exactly these)."""

    name: str  # trainer, gen-<i>, evaluator; under srun task-<procid>
    role: str  # trainer, generator, evaluator, idle
    count: int
    ranks: int = 1  # torchrun ranks (the trainer)
    # False: the process runs on CPU (the built-in torch engine) and takes no GPU, though gpu_hours still counts its
    # `count` (as on a CPU-only node). A 1-GPU workstation then runs the embedded default.
    gpu: bool = True


@dataclass(frozen=True)
class Placement:
    name: str
    role: str
    count: int
    node: str
    devices: tuple[str, ...]  # CUDA device ids as the node names them; () on a CPU-only node
    ranks: int = 1
    gpu: bool = True
    argv: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # what the launcher sets on top of its own environment

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "role": self.role,
            "node": self.node,
            "devices": list(self.devices),
            "device_count": self.count,
            "ranks": self.ranks,
            "env": dict(self.env),
            "argv": list(self.argv),
        }


def visible_devices(env: Mapping[str, str]) -> list[str] | None:
    """The GPUs this node lets us use: CUDA_VISIBLE_DEVICES when set, else torch's device count; None = CPU only.

    CUDA_VISIBLE_DEVICES="" (or "-1", CUDA's way of hiding every device) means CPU only, as it does for torch, and
    CUDA ignores every entry from the first negative one on ("0,1,-1,3" shows devices 0 and 1 only): so do we, or a
    process would be handed "-1" (no GPU) or a device the job had hidden."""
    raw = env.get(CUDA_ENV)
    if raw is not None:
        ids = [d.strip() for d in raw.split(",") if d.strip()]
        cut = next((i for i, d in enumerate(ids) if d.startswith("-")), len(ids))
        return ids[:cut] or None
    import torch  # only here: cli imports no torch at module load

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [str(i) for i in range(n)] or None


def generator_asks(n_generators: int, per_generator: int, gpu: bool = True) -> list[Ask]:
    return [Ask(f"gen-{i}", "generator", per_generator, gpu=gpu) for i in range(n_generators)]


def local_asks(
    trainer_ranks: int,
    n_generators: int,
    per_generator: int,
    evaluator_devices: int,
    gpu_engines: bool = True,
    trainer_gpu: bool = True,
) -> list[Ask]:
    """`scalerl train` on one node: the trainer (one device per rank), the generators, the evaluator (0 = none,
    eval.mode = "inline"). gpu_engines False: generators and evaluator run the CPU torch engine; trainer_gpu False:
    the trainer runs on CPU (trainer.device = "cpu") and leaves the node's GPUs to the engines."""
    asks = [
        Ask("trainer", "trainer", trainer_ranks, ranks=trainer_ranks, gpu=trainer_gpu),
        *generator_asks(n_generators, per_generator, gpu_engines),
    ]
    if evaluator_devices:
        asks.append(Ask("evaluator", "evaluator", evaluator_devices, gpu=gpu_engines))
    return asks


def plan_node(visible: Sequence[str] | None, asks: Sequence[Ask], node: str = LOCAL_NODE) -> list[Placement]:
    """Disjoint consecutive blocks of `visible` for `asks`, in order. PlanError when the node has too few devices
    or names one twice; with visible None (CPU only) every placement has no devices."""
    if visible is None:
        return [Placement(a.name, a.role, a.count, node, (), a.ranks, a.gpu) for a in asks]
    dup = sorted({d for d in visible if list(visible).count(d) > 1})
    if dup:
        raise PlanError(f"device plan: {CUDA_ENV} names device(s) {','.join(dup)} more than once on {node}")
    wanted = sum(a.count for a in asks if a.gpu)
    if wanted > len(visible):
        raise PlanError(
            f"device plan: {len(visible)} device(s) visible on {node} ({','.join(visible)}), {wanted} asked for: "
            f"{describe(asks)}"
        )
    out, at = [], 0
    for a in asks:
        if not a.gpu:
            out.append(Placement(a.name, a.role, a.count, node, (), a.ranks, False))
            continue
        out.append(Placement(a.name, a.role, a.count, node, tuple(visible[at : at + a.count]), a.ranks))
        at += a.count
    check_disjoint(out)
    return out


def check_disjoint(placements: Sequence[Placement]) -> None:
    """No device of a node in two processes (guards every plan, including one assembled from several nodes)."""
    owner: dict[tuple[str, str], str] = {}
    for p in placements:
        for d in p.devices:
            other = owner.setdefault((p.node, d), p.name)
            if other != p.name:
                raise PlanError(f"device plan: device {d} on {p.node} is given to both {other} and {p.name}")


def describe(asks: Sequence[Ask]) -> str:
    """'trainer 4 (4 ranks), generators 2 x 2, evaluator 2': who asks for how many."""
    parts, gens = [], [a for a in asks if a.role == "generator"]
    gens = [a for a in gens if a.gpu]  # a CPU engine asks for no GPU
    for a in asks:
        if a.role == "trainer":
            parts.append(f"trainer {a.count}" + (f" ({a.ranks} ranks)" if a.ranks > 1 else ""))
        elif a.role == "evaluator" and a.gpu:
            parts.append(f"evaluator {a.count}")
    if gens:
        counts = sorted({a.count for a in gens})
        gen = (
            f"generators {len(gens)} x {counts[0]}" if len(counts) == 1 else f"generators {sum(a.count for a in gens)}"
        )
        parts.insert(1 if parts and parts[0].startswith("trainer") else 0, gen)
    return ", ".join(parts)


def cuda_env(p: Placement, visible: Sequence[str] | None) -> dict[str, str]:
    """The child's CUDA_VISIBLE_DEVICES: its own block (none for a CPU engine on a GPU node, so that it cannot take
    one by accident); nothing on a CPU-only node (module docstring)."""
    return {} if visible is None else {CUDA_ENV: ",".join(p.devices)}


def total_devices(placements: Sequence[Placement]) -> int:
    """What gpu_hours charges per wall hour for these processes (the Ledger's n_devices)."""
    return sum(p.count for p in placements)


# ---------------------------------------------------------------- srun


def slurm_task_ask(
    procid: int,
    role: str,
    trainer_procs: int,
    per_generator: int,
    evaluator_devices: int,
    gpu_engines: bool = True,
    trainer_gpu: bool = True,
) -> Ask:
    """A trainer task asks for its ranks, a generator task its engine's devices, the evaluator task one
    generator's, a spare (idle) task none."""
    count = {"trainer": trainer_procs, "generator": per_generator, "evaluator": evaluator_devices}.get(role, 0)
    gpu = trainer_gpu if role == "trainer" else gpu_engines
    return Ask(f"task-{procid}", role, count, ranks=trainer_procs if role == "trainer" else 1, gpu=gpu)


def slurm_step_plan(
    nodes: Sequence[str],
    tasks_per_node: Sequence[int],
    roles: Mapping[int, str],
    visible: Sequence[str] | None,
    trainer_procs: int,
    per_generator: int,
    evaluator_devices: int,
    per_task_binding: bool = False,
    gpu_engines: bool = True,
    trainer_gpu: bool = True,
) -> list[Placement]:
    """Every task of a block-distributed srun step, in task order. Each node is planned on its own from `visible`
    (what a task sees: with --gres every task of a node sees the node's GPUs); with srun's per-task binding
    (--gpus-per-task) `visible` is the task's own GPUs and each task is planned alone."""
    out, first = [], 0
    for node, n in zip(nodes, tasks_per_node, strict=True):
        asks = [
            slurm_task_ask(p, roles[p], trainer_procs, per_generator, evaluator_devices, gpu_engines, trainer_gpu)
            for p in range(first, first + n)
        ]
        if per_task_binding:
            out += [p for a in asks for p in plan_node(visible, [a], node)]
        else:
            out += plan_node(visible, asks, node)
        first += n
    if not per_task_binding:
        check_disjoint(out)
    return out
