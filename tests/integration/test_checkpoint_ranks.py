"""Checkpoints across ranks (gloo on CPU): save at 2 ranks, stop, resume at 2 ranks and continue bit-exactly;
resume at 1 rank and hold the same weights. Plain replicated modules and FSDP2-sharded ones."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port, leave_ranks
from safetensors.torch import load_file, save_file

from scalerl.trainer_service.checkpoint import resume_checkpoint, save_checkpoint
from tests.conftest import tiny_qwen2

SAVE_AT, CONTINUE = 3, 3


def model_and_optimizer(sharded: bool, seed: int):
    model = tiny_qwen2(seed)
    if sharded:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))
    return model, opt, sched


def step(model, opt, sched, sharded: bool):
    ids = torch.randint(1, 40, (4, 10))  # each rank's own data, from its own RNG: the checkpoint restores it
    loss = model(input_ids=ids, labels=ids).loss
    opt.zero_grad()
    loss.backward()
    if not sharded and dist.is_initialized():
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()
    opt.step()
    sched.step()


def full(model) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.clone().contiguous() for k, v in sd.items() if k != "lm_head.weight"}


def _rank(rank, world, port, out, phase, sharded):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)
        model, opt, sched = model_and_optimizer(sharded, seed=7 if phase == "first" else 99)
        done = 0
        if phase == "first":
            for _ in range(SAVE_AT):
                step(model, opt, sched, sharded)
            saved = full(model)
            save_checkpoint(out, SAVE_AT, model, opt, {"lr_scheduler": sched.state_dict()})
            if rank == 0:
                save_file(saved, os.path.join(out, "at_save.safetensors"))
            done = SAVE_AT
        else:
            got = resume_checkpoint(out, model, opt, tidy=rank == 0)
            sched.load_state_dict(got.state["lr_scheduler"])
            done = got.step
        for _ in range(SAVE_AT + CONTINUE - done):
            step(model, opt, sched, sharded)
        final = full(model)
        if rank == 0:
            save_file(final, os.path.join(out, f"{phase}.safetensors"))
        leave_ranks()
    finally:  # only when the work raised: the error is what the test reports
        dist.destroy_process_group()


def spawn(world, out, phase, sharded):
    mp.spawn(_rank, args=(world, free_port(), str(out), phase, sharded), nprocs=world, join=True)


@pytest.mark.parametrize("sharded", [False, True], ids=["replicated", "fsdp2"])
def test_two_rank_checkpoint_resumes_bit_exactly_at_two_ranks_and_loads_at_one(tmp_path, sharded):
    spawn(2, tmp_path, "first", sharded)  # 3 steps, checkpoint, 3 more: the reference run; then the processes end
    spawn(2, tmp_path, "resumed", sharded)  # new processes, other initial weights: resume at step 3, 3 more steps
    reference, resumed = (
        load_file(str(tmp_path / "first.safetensors")),
        load_file(str(tmp_path / "resumed.safetensors")),
    )
    assert reference.keys() == resumed.keys()
    for name in reference:
        assert torch.equal(reference[name], resumed[name]), name  # bit-exact: same weights, optimizer, LR, RNG
    at_save = load_file(str(tmp_path / "at_save.safetensors"))
    assert any(not torch.equal(at_save[n], reference[n]) for n in at_save)  # the continuation did train

    # One rank, no process group, a plain module: the same weights as the two ranks saved.
    model, opt, sched = model_and_optimizer(False, seed=5)
    got = resume_checkpoint(tmp_path, model, opt, tidy=False)
    assert got.step == SAVE_AT
    sched.load_state_dict(got.state["lr_scheduler"])
    for name, value in model.state_dict().items():
        if name in at_save:
            assert torch.equal(value, at_save[name]), name
    assert sched.get_last_lr() == [pytest.approx(3e-3)] and len(opt.state) == len(list(model.parameters()))
