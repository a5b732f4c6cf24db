"""The device plan (cli/device_plan.py) over real node layouts: disjoint blocks for the trainer's ranks, each
generator's engine and the evaluator; one line and exit 2 when a node has too few GPUs; counts that gpu_hours
charges. What `scalerl train --dry-run --json` reports of it: tests/integration/test_dry_run_cli.py."""

from __future__ import annotations

import pytest

from scalerl.cli import slurm
from scalerl.cli.device_plan import (
    PlanError,
    check_disjoint,
    cuda_env,
    local_asks,
    plan_node,
    slurm_step_plan,
    total_devices,
    visible_devices,
)
from scalerl.cli.run_config import resolve
from scalerl.trainer_service.components.ledger import Ledger

EIGHT = [str(i) for i in range(8)]


def devices(placements):
    return {p.name: ",".join(p.devices) for p in placements}


def test_one_node_eight_gpus_four_ranks_two_tp2_generators():
    plan = plan_node(EIGHT, local_asks(4, 2, 2, 0))
    assert devices(plan) == {"trainer": "0,1,2,3", "gen-0": "4,5", "gen-1": "6,7"}
    assert plan[0].ranks == 4 and total_devices(plan) == 8


def test_one_node_eight_gpus_with_the_evaluator():
    plan = plan_node(EIGHT, local_asks(2, 2, 2, 2))
    assert devices(plan) == {"trainer": "0,1", "gen-0": "2,3", "gen-1": "4,5", "evaluator": "6,7"}


def test_a_subset_of_the_node_keeps_its_ids():
    plan = plan_node(visible_devices({"CUDA_VISIBLE_DEVICES": "2,3,6,7"}), local_asks(2, 1, 1, 1))
    assert devices(plan) == {"trainer": "2,3", "gen-0": "6", "evaluator": "7"}


def test_over_subscription_names_the_counts():
    with pytest.raises(PlanError) as e:
        plan_node(["2", "3", "6", "7"], local_asks(4, 2, 2, 2))
    msg = str(e.value)
    assert "\n" not in msg
    assert "4 device(s) visible on localhost (2,3,6,7), 10 asked for: trainer 4 (4 ranks), generators 2 x 2" in msg
    assert msg.endswith("evaluator 2")


def test_a_device_named_twice_is_refused():
    with pytest.raises(PlanError, match="names device.s. 1 more than once"):
        plan_node(["0", "1", "1"], local_asks(1, 1, 1, 0))


def test_cpu_only_has_no_devices_but_counts_every_process():
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}) is None
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "-1"}) is None
    # CUDA stops at the first negative entry: "-1" went to a generator as a device, and "3" (hidden) to another.
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "0,1,-1,3"}) == ["0", "1"]
    plan = plan_node(None, local_asks(2, 3, 1, 1))  # CPU: nothing to over-subscribe
    assert all(p.devices == () for p in plan)
    assert [p.count for p in plan] == [2, 1, 1, 1, 1] and total_devices(plan) == 6


def test_visible_devices_without_the_variable_asks_torch():
    import torch

    expected = [str(i) for i in range(torch.cuda.device_count())] or None
    assert visible_devices({}) == expected


def test_overlap_is_caught():
    a, b = plan_node(["0", "1"], local_asks(1, 1, 1, 0))
    with pytest.raises(PlanError, match="device 0 on localhost is given to both trainer and gen-0"):
        check_disjoint([a, b.__class__(**{**b.__dict__, "devices": ("0",)})])


@pytest.mark.parametrize(
    "sets, eval_mode, world",
    [
        ((), "process", 1),
        (("run.n_generators=3", "run.trainer_procs=2"), "inline", 2),
        (
            (
                "run.n_generators=2",
                "generator.backend='vllm'",
                "generator.vllm.tensor_parallel_size=2",
                "generator.vllm.engines=2",
                "run.trainer_procs=4",
            ),
            "process",
            4,
        ),
    ],
)
def test_plan_counts_are_what_gpu_hours_charges(tmp_path, sets, eval_mode, world):
    """The plan's per-process counts come from the same resolved keys the Ledger reads (wiring.generator_devices,
    wiring.eval_devices), so its total is the Ledger's device count."""
    cfg = resolve(None, list(sets), run_dir=str(tmp_path / "run"), eval_mode=eval_mode)[1]
    evaluator = cfg.wiring.eval_devices if cfg.eval.mode == "process" else 0
    plan = plan_node(
        None, local_asks(cfg.run.trainer_procs, cfg.run.n_generators, cfg.wiring.generator_devices, evaluator)
    )
    ledger = Ledger.open(cfg.trainer, cfg.wiring, cfg.eval, world_size=world, step=0, state={}, resumed=False)
    try:
        assert total_devices(plan) == ledger.n_devices
    finally:
        ledger.close()


# ---------------------------------------------------------------- srun


def step(nodes, tpn, trainer_nodes=0, evaluator=False):
    task = slurm.SlurmTask(procid=0, ntasks=sum(tpn), nodes=tuple(nodes), tasks_per_node=tuple(tpn))
    return task, slurm.step_roles(task, trainer_nodes, evaluator)


def test_srun_two_nodes_trainer_node_and_generator_node():
    task, roles = step(["n1", "n2"], [4, 4], trainer_nodes=1, evaluator=True)
    plan = slurm_step_plan(task.nodes, task.tasks_per_node, roles, ["0", "1", "2", "3"], 4, 1, 1)
    assert [(p.node, p.role, ",".join(p.devices)) for p in plan] == [
        ("n1", "trainer", "0,1,2,3"),
        ("n1", "idle", ""),
        ("n1", "idle", ""),
        ("n1", "idle", ""),
        ("n2", "generator", "0"),
        ("n2", "generator", "1"),
        ("n2", "generator", "2"),
        ("n2", "evaluator", "3"),
    ]


def test_srun_one_node_trainer_ranks_and_generators_never_share():
    """The collision of issue 21: 4 ranks took GPUs 0-3 while generator tasks 1-3 picked 1-3 by local id."""
    task, roles = step(["gpu1"], [4])
    plan = slurm_step_plan(task.nodes, task.tasks_per_node, roles, EIGHT, 4, 1, 0)
    assert [",".join(p.devices) for p in plan] == ["0,1,2,3", "4", "5", "6"]
    with pytest.raises(
        PlanError, match=r"4 device\(s\) visible on gpu1 .*7 asked for: trainer 4 .4 ranks., generators 3 x 1"
    ):
        slurm_step_plan(task.nodes, task.tasks_per_node, roles, EIGHT[:4], 4, 1, 0)


def test_srun_four_nodes_two_trainer_nodes_tp2_generators():
    task, roles = step(["a", "b", "c", "d"], [1, 1, 4, 4], trainer_nodes=2)
    plan = slurm_step_plan(task.nodes, task.tasks_per_node, roles, EIGHT, 8, 2, 2)
    assert [(p.node, ",".join(p.devices)) for p in plan[:2]] == [("a", "0,1,2,3,4,5,6,7"), ("b", "0,1,2,3,4,5,6,7")]
    assert [",".join(p.devices) for p in plan[2:6]] == ["0,1", "2,3", "4,5", "6,7"]
    assert {p.node for p in plan[6:]} == {"d"} and total_devices(plan) == 8 + 8 + 8 * 2


def test_srun_per_task_binding_plans_each_task_alone():
    task, roles = step(["n1"], [3])
    plan = slurm_step_plan(task.nodes, task.tasks_per_node, roles, ["5"], 1, 1, 0, per_task_binding=True)
    assert [p.devices for p in plan] == [("5",), ("5",), ("5",)]  # each task's own GPU, as it sees it
    bound = {"SLURM_GPUS_PER_TASK": "1", "CUDA_VISIBLE_DEVICES": "5"}
    assert slurm.own_devices(bound, plan, 1) is None  # srun's binding is left alone
    with pytest.raises(PlanError, match="1 device"):
        slurm_step_plan(task.nodes, task.tasks_per_node, roles, ["5"], 2, 1, 0, per_task_binding=True)


def test_srun_evaluator_needs_a_generator_left():
    with pytest.raises(Exception, match="leave no generator task"):
        step(["n1"], [2], evaluator=True)


# ---------------------------------------------------------------- --dry-run


def test_the_cpu_torch_engine_takes_no_gpu_so_one_gpu_runs_the_default():
    # The built-in torch engine runs on CPU: on a 1-GPU workstation the trainer gets the GPU, the generator and the
    # evaluator none (their CUDA_VISIBLE_DEVICES hides it), and gpu_hours still counts each process once.
    plan = plan_node(["0"], local_asks(1, 1, 1, 1, gpu_engines=False))
    assert [(p.name, p.devices) for p in plan] == [("trainer", ("0",)), ("gen-0", ()), ("evaluator", ())]
    envs = [cuda_env(p, ["0"])["CUDA_VISIBLE_DEVICES"] for p in plan]
    assert envs == ["0", "", ""]
    assert total_devices(plan) == 3
    with pytest.raises(PlanError):  # vLLM engines do take GPUs
        plan_node(["0"], local_asks(1, 1, 1, 1, gpu_engines=True))


def test_a_cpu_trainer_takes_no_gpu_and_leaves_them_to_the_engines():
    # trainer.device = "cpu" on a GPU node: the plan gave its 2 ranks GPUs 0 and 1 that it never used, and hid
    # them from the vLLM engines.
    plan = plan_node(["0", "1"], local_asks(2, 2, 1, 0, gpu_engines=True, trainer_gpu=False))
    assert [(p.name, p.devices) for p in plan] == [("trainer", ()), ("gen-0", ("0",)), ("gen-1", ("1",))]
    assert cuda_env(plan[0], ["0", "1"]) == {"CUDA_VISIBLE_DEVICES": ""}
    task, roles = step(["n1"], [3])
    srun = slurm_step_plan(task.nodes, task.tasks_per_node, roles, ["0", "1"], 2, 1, 0, trainer_gpu=False)
    assert [p.devices for p in srun] == [(), ("0",), ("1",)]


def test_per_task_binding_is_taken_only_when_the_task_sees_its_own_gpus():
    assert slurm.per_task_binding({"SLURM_GPUS_PER_TASK": "1", "CUDA_VISIBLE_DEVICES": "5"})
    assert slurm.per_task_binding({"SLURM_GPUS_PER_TASK": "a100:2", "CUDA_VISIBLE_DEVICES": "2,3"})
    # --gpu-bind=none: every task sees the node's four GPUs, and planned alone each took GPU 0.
    assert not slurm.per_task_binding({"SLURM_GPUS_PER_TASK": "1", "CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    assert not slurm.per_task_binding({"CUDA_VISIBLE_DEVICES": "0"})
