"""The tiny MoE (shared/models/tiny_moe.py: 4 layers x 8 experts, top-2) in the trainer: it trains and its loss
moves; FSDP2 at 2 gloo ranks, sharding each decoder layer with its experts, equals one plain rank on the same
batch; a DCP checkpoint written at 2 ranks resumes at 1 rank and continues as the 2 ranks did; `scalerl export`
of it loads in transformers with the experts in the checkpoint layout; bf16 mixed precision with activation
checkpointing trains at 2 ranks."""

import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from scalerl.shared.models.tiny_moe import build_tiny_moe, save_tiny_moe_dir
from scalerl.shared.wire.messages import Rollout
from scalerl.trainer_service.batch import build_batch
from scalerl.trainer_service.checkpoint import resume_checkpoint, save_checkpoint
from scalerl.trainer_service.config import OptimSection, TrainerConfig
from scalerl.trainer_service.loss import LossConfig
from scalerl.trainer_service.parallel import full_state_dict, init_distributed, shard_model
from scalerl.trainer_service.policy import sequence_logprobs
from scalerl.trainer_service.step import StepConfig, broadcast_batch, make_optimizer, train_step
from tests.conftest import leave_ranks

# Same numbers as the dense 2-rank test (test_trainer_step.py): FP32 on both sides, only the order of the sums
# differs (each rank's rows, then the reduce-scatter), so the results agree to float32 rounding.
RTOL, ATOL = 1e-5, 1e-6
EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp.gate.weight")


def rollout(group, k, reward, n_tok, seed=0):
    rng = np.random.default_rng((seed, group, k))
    return Rollout(
        group_id=f"g{group}",
        sample_index=k,
        prompt_ids=rng.integers(4, 100, 6).astype(np.int32),
        completion_ids=rng.integers(4, 100, n_tok).astype(np.int32),
        logprobs=(-rng.random(n_tok) * 3 - 1).astype(np.float32),
        versions=np.zeros(n_tok, np.int32),
        forced=np.zeros(n_tok, np.uint8),
        finish_reason="stop",
        reward=float(reward),
        t_queued=0.0,
        t_started=0.0,
        t_finished=0.0,
    )


def moe_batch(seed=0):
    groups = [[rollout(g, k, (k + g) % 2, 4 + (3 * k + g) % 7, seed) for k in range(4)] for g in range(4)]
    return build_batch(groups, "batch", zero_variance_filter=True)[0]


def sgd_step(model, batch, **step):
    # Plain SGD, no clipping: a wrong gradient scale across ranks would show (Adam's first step hides it).
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return train_step(model, opt, sched, batch, LossConfig(), StepConfig(**step), grad_clip=1e9)


def adam_step(model, opt, sched, batch):
    return train_step(model, opt, sched, batch, LossConfig(), StepConfig())


def adam(model):
    return make_optimizer(model, OptimSection(lr=3e-3, warmup_steps=0))


def assert_same(got: dict, want: dict, what: str):
    got = {k: v for k, v in got.items() if k != "lm_head.weight"}
    want = {k: v for k, v in want.items() if k != "lm_head.weight"}
    assert set(got) == set(want), what
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=RTOL, atol=ATOL, msg=f"{what}: {name}")


def objective(model, batch) -> float:
    """sum_i A_i x mean log pi(completion_i): what the policy gradient climbs."""
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, batch.input_ids, batch.attention_mask)
    mask = batch.loss_mask.float()
    return float(((lp * mask).sum(1) / mask.sum(1) * batch.adv).sum())


def test_tiny_moe_trains_and_its_loss_moves():
    torch.manual_seed(0)
    model = build_tiny_moe(seed=0)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt, sched = adam(model)
    batch = moe_batch()
    with torch.no_grad():  # on-policy: the generator's logprobs are the model's own, so every ratio starts at 1
        batch.gen_logprobs = sequence_logprobs(model, batch.input_ids, batch.attention_mask)[0] * batch.loss_mask
    start = objective(model, batch)
    losses = [adam_step(model, opt, sched, batch)["loss"] for _ in range(4)]
    assert all(np.isfinite(losses)) and np.abs(np.diff(losses)).min() > 1e-3, losses
    # Four steps on the same batch: positive-advantage completions became likelier, negative ones less likely.
    assert objective(model, batch) > start + 0.5, (start, objective(model, batch))
    after = model.state_dict()
    for layer in range(4):
        for part in EXPERTS:
            name = f"model.layers.{layer}.{part}"
            assert not torch.equal(before[name], after[name]), f"{name} did not train"
        # Every expert of every layer trained (top-2 of 8 over ~150 tokens reaches them all).
        name = f"model.layers.{layer}.mlp.experts.down_proj"
        moved = (after[name] - before[name]).flatten(1).abs().amax(1)
        assert bool((moved > 0).all()), f"{name}: an expert never trained"


def _rank_main(rank, world, init_file, out_dir, model_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from torch.distributed.fsdp import FSDPModule

    try:
        cfg = TrainerConfig(device="cpu")
        d = init_distributed(cfg)
        assert d.uses_fsdp and d.world == world
        # 1) One SGD step, FSDP2 at 2 ranks: each decoder layer (attention, router and its 8 experts) is one
        # FSDP unit; the fused expert tensors are sharded along the expert dimension, 4 experts per rank.
        model = shard_model(build_tiny_moe(seed=0), d, cfg)
        experts = model.model.layers[0].mlp.experts.gate_up_proj
        assert all(isinstance(layer, FSDPModule) for layer in model.model.layers)
        assert type(experts).__name__ == "DTensor" and experts.to_local().shape == (4, 256, 128)
        batch = broadcast_batch(moe_batch() if rank == 0 else None)
        stats = sgd_step(model, batch)
        state = full_state_dict(model)
        if rank == 0:
            save_file({n: v.contiguous() for n, v in state.items()}, os.path.join(out_dir, "sgd_two_ranks.st"))
            (open(os.path.join(out_dir, "sgd_stats.json"), "w")).write(json.dumps(stats))
        # 2) AdamW: a step, a DCP checkpoint at 2 ranks, then one more step on another batch.
        model = shard_model(build_tiny_moe(seed=0), d, cfg)
        opt, sched = adam(model)
        adam_step(model, opt, sched, broadcast_batch(moe_batch(1) if rank == 0 else None))
        save_checkpoint(os.path.join(out_dir, "ckpt"), 1, model, opt, {"note": "moe"}, model_dir=model_dir)
        saved = full_state_dict(model)
        adam_step(model, opt, sched, broadcast_batch(moe_batch(2) if rank == 0 else None))
        final = full_state_dict(model)
        if rank == 0:
            save_file({n: v.contiguous() for n, v in saved.items()}, os.path.join(out_dir, "at_save.st"))
            save_file({n: v.contiguous() for n, v in final.items()}, os.path.join(out_dir, "after_two.st"))
        # 3) bf16 compute, FP32 master weights, activation checkpointing (the GPU settings): trains, stays finite.
        bf16 = TrainerConfig(device="cpu", param_dtype="bfloat16", activation_checkpointing=True)
        d = init_distributed(bf16)
        model = shard_model(build_tiny_moe(seed=0), d, bf16)
        before = full_state_dict(model)
        opt, sched = adam(model)
        stats = adam_step(model, opt, sched, broadcast_batch(moe_batch() if rank == 0 else None))
        after = full_state_dict(model)
        if rank == 0 and np.isfinite(stats["loss"]) and all(v.dtype == torch.float32 for v in after.values()):
            if all(not torch.equal(before[n], after[n]) for n in after if ".mlp." in n):
                open(os.path.join(out_dir, "bf16_ok"), "w").close()
        leave_ranks()  # tests/conftest.py: a barrier, then the rank leaves without tearing gloo down
    finally:  # only when the work raised: the error is what the test reports
        dist.destroy_process_group()


def test_two_fsdp_ranks_equal_one_and_the_checkpoint_resumes_at_one_rank_and_exports(tmp_path):
    from transformers import AutoModelForCausalLM

    from scalerl.trainer_service.export import export_checkpoint

    model_dir = save_tiny_moe_dir(tmp_path / "tiny-moe", seed=0)
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path), str(model_dir)), nprocs=2, join=True)

    # FSDP2 at 2 ranks == one plain process, weights and logged statistics.
    torch.set_num_threads(1)
    one = build_tiny_moe(seed=0)
    want = sgd_step(one, moe_batch())
    assert_same(load_file(str(tmp_path / "sgd_two_ranks.st")), one.state_dict(), "2 FSDP ranks vs 1 rank")
    got = json.loads((tmp_path / "sgd_stats.json").read_text())
    for key in ("loss", "mean_ratio", "entropy", "grad_norm"):
        assert got[key] == pytest.approx(want[key], rel=RTOL, abs=1e-7), key

    # The 2-rank checkpoint resumes in one plain process (model and AdamW state) and continues as 2 ranks did.
    model = build_tiny_moe(seed=5)
    opt, sched = adam(model)
    resumed = resume_checkpoint(tmp_path / "ckpt", model, opt)
    assert resumed.step == 1 and resumed.state == {"note": "moe"}
    assert_same(model.state_dict(), load_file(str(tmp_path / "at_save.st")), "resumed weights")
    adam_step(model, opt, sched, moe_batch(2))
    assert_same(model.state_dict(), load_file(str(tmp_path / "after_two.st")), "resumed at 1 rank, then a step")

    # `scalerl export`: per-expert checkpoint names, and transformers loads back the checkpointed weights.
    out = tmp_path / "export"
    export_checkpoint(tmp_path / "ckpt", out)
    names = load_file(str(out / "model.safetensors")).keys()
    assert "model.layers.3.mlp.experts.7.down_proj.weight" in names
    assert not any(n.endswith("experts.gate_up_proj") for n in names)
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(loaded).__name__ == "Qwen3MoeForCausalLM"
    assert_same(loaded.state_dict(), load_file(str(tmp_path / "at_save.st")), "exported weights")
    assert (tmp_path / "bf16_ok").exists()  # bf16 mixed precision trained every router and expert tensor
