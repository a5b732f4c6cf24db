"""Router replay through the whole trainer path on the tiny Qwen3-MoE: rollouts carrying routed experts over the
wire, build_batch, broadcast_batch, FSDP2 at 2 gloo ranks with activation checkpointing (the backward recomputes
each layer and must replay the same experts): equal to one unsharded process. The load-balancing term is a
product of per-micro-batch means (loss.load_balance_loss), so it depends on how a step is cut: with it on, the two
runs agree to the term's own size."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from scalerl.shared.models.tiny_moe import build_tiny_moe
from scalerl.shared.wire.codec import decode, encode
from scalerl.shared.wire.messages import Rollout, RoutedExperts
from scalerl.trainer_service.batch import build_batch
from scalerl.trainer_service.config import LossConfig, OptimSection, TrainerConfig
from scalerl.trainer_service.parallel import full_state_dict, init_distributed, shard_model
from scalerl.trainer_service.step import StepConfig, broadcast_batch, make_optimizer, train_step
from tests.conftest import leave_ranks

LAYERS, EXPERTS, K = 4, 8, 2
LR = 1e-2
COEFS = (0.0, 0.01)


def rollout(group: int, k: int, reward: float, n_tok: int) -> Rollout:
    rng = np.random.default_rng(100 * group + k)
    prompt = rng.integers(3, 40, 5).astype(np.int32)
    # A generator whose router disagreed with the trainer's on many choices: random experts per token and layer.
    routed = np.stack([rng.permutation(EXPERTS)[:K] for _ in range((5 + n_tok - 1) * LAYERS)])
    r = Rollout(
        group_id=f"g{group}",
        sample_index=k,
        prompt_ids=prompt,
        completion_ids=rng.integers(3, 40, n_tok).astype(np.int32),
        logprobs=(-rng.random(n_tok) * 3).astype(np.float32),
        versions=np.zeros(n_tok, np.int32),
        forced=np.zeros(n_tok, np.uint8),
        finish_reason="stop",
        reward=reward,
        t_queued=0.0,
        t_started=0.0,
        t_finished=0.0,
        routed_experts=RoutedExperts.pack(routed.reshape(5 + n_tok - 1, LAYERS, K), EXPERTS),
    )
    return decode(encode(r))  # as the trainer receives it


def groups():
    return [[rollout(g, k, reward=(k + g) % 2, n_tok=3 + (k + 2 * g) % 5) for k in range(4)] for g in range(3)]


def one_step(model, batch, coef, **step):
    opt, sched = make_optimizer(model, OptimSection(lr=LR, warmup_steps=0))
    loss_cfg = LossConfig(load_balance_coef=coef)
    return train_step(model, opt, sched, batch, loss_cfg, StepConfig(**step), grad_clip=1e9, router_replay=True)


def _rank_main(rank, world_size, init_file, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        cfg = TrainerConfig(device="cpu", activation_checkpointing=True, router_replay=True)
        d = init_distributed(cfg)
        for coef in COEFS:
            model = shard_model(build_tiny_moe(seed=0), d, cfg)
            batch = broadcast_batch(build_batch(groups(), "batch", True)[0] if rank == 0 else None)
            assert batch.routed_experts is not None and batch.routed_experts.shape[2:] == (LAYERS, K)
            stats = one_step(model, batch, coef, max_tokens_per_microbatch=24)
            state = full_state_dict(model)
            if rank == 0:
                save_file({n: v.contiguous() for n, v in state.items()}, os.path.join(out_dir, f"two_{coef}.st"))
                torch.save(stats, os.path.join(out_dir, f"stats_{coef}.pt"))
        leave_ranks()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned ranks, about 13 s
def test_replay_at_two_fsdp_ranks_with_checkpointing_equals_one_rank(tmp_path):
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    batch, _ = build_batch(groups(), "batch", True)
    for coef in COEFS:
        model = build_tiny_moe(seed=0)
        want = one_step(model, batch, coef)
        got = torch.load(tmp_path / f"stats_{coef}.pt")
        assert want["router_agreement"] == got["router_agreement"] == 1.0
        assert want["router_own_agreement"] < 0.5  # the generator's routing was far from the trainer's
        exact = ("loss", "router_own_agreement", "expert_load_entropy") + (() if coef else ("grad_norm",))
        for key in exact:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), (coef, key)
        two, mine = load_file(str(tmp_path / f"two_{coef}.st")), model.state_dict()
        if coef == 0:
            assert "load_balance_loss" not in got
            for name, value in two.items():
                # With eps 1e-15, AdamW's first step moves every entry by lr * sign(grad). An entry whose gradient
                # is float cancellation (8.6e-11 against a tensor max of 4e-4 on one CI machine) takes its sign
                # from the summation order, which the sharded run changes: it may move the other way, nothing else.
                grad = model.get_parameter(name).grad  # by name: lm_head.weight is the tied embedding
                g = grad.abs() if grad is not None else torch.zeros_like(value)
                noise = (g <= 1e-6 * g.max()) & (g > 0)
                assert noise.float().mean() < 1e-3, name  # a handful of entries, not a way to pass anything
                assert ((value - mine[name]).abs()[noise] <= 2 * LR + 1e-6).all(), name
                torch.testing.assert_close(value[~noise], mine[name][~noise], rtol=1e-5, atol=1e-6, msg=name)
        else:  # per micro-batch: close to the one-process value, and it moved the routers
            assert got["load_balance_loss"] == pytest.approx(want["load_balance_loss"], rel=0.05)
            assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-2)
            assert all(torch.isfinite(v).all() for v in two.values())
