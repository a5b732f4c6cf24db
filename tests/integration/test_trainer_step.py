"""One training step: real Qwen2 model, and a 2-rank gloo step equal to a 1-rank step on the same batch."""

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from scalerl.shared.messages import Rollout
from scalerl.trainer_service.batch import batch_stats, build_batch
from scalerl.trainer_service.config import OptimSection
from scalerl.trainer_service.loss import LossConfig
from scalerl.trainer_service.step import broadcast_batch, make_optimizer, train_step


def tiny_model(seed=0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=64,
    )
    return Qwen2ForCausalLM(cfg)


def rollout(group, k, reward, n_tok, version=0, forced_tail=0):
    rng = np.random.default_rng(hash((group, k)) % 2**32)
    forced = np.zeros(n_tok, np.uint8)
    if forced_tail:
        forced[-forced_tail:] = 1
    return Rollout(
        group_id=f"g{group}",
        sample_index=k,
        prompt_ids=rng.integers(1, 40, 5).astype(np.int32),
        completion_ids=rng.integers(1, 40, n_tok).astype(np.int32),
        logprobs=(-rng.random(n_tok) * 3).astype(np.float32) * (1 - forced),
        versions=np.full(n_tok, version, np.int32),
        forced=forced,
        finish_reason="interrupted" if forced_tail else "stop",
        reward=float(reward),
        t_queued=0.0,
        t_started=0.0,
        t_finished=0.0,
    )


def groups():
    # 4 informative groups of 4 samples, plus one all-correct group that the zero-variance filter drops.
    out = []
    for g in range(4):
        out.append(
            [
                rollout(g, k, reward=(k + g) % 2, n_tok=3 + (k + g) % 4, forced_tail=2 if (g, k) == (1, 1) else 0)
                for k in range(4)
            ]
        )
    out.append([rollout(9, k, reward=1.0, n_tok=4) for k in range(4)])
    return out


def test_build_batch_filters_zero_variance_and_masks_forced_tokens():
    batch, n_zero = build_batch(groups(), "batch", zero_variance_filter=True)
    assert n_zero == 1 and batch.n_groups == 4 and batch.input_ids.shape[0] == 16
    # The interrupted sample (group 1, sample 1) has its 2 forced tokens out of the loss.
    row = 5
    n_completion = 3 + (1 + 1) % 4
    assert batch.loss_mask[row].sum().item() == n_completion - 2
    assert batch.attention_mask[row].sum().item() == 5 + n_completion
    none, _ = build_batch([groups()[-1]], "batch", zero_variance_filter=True)
    assert none is None
    stats = batch_stats(groups(), version=3)
    assert (
        stats["staleness_max"] == 3 and stats["samples"] == 20 and stats["interruption_rate"] == pytest.approx(1 / 20)
    )


def _one_step(model, batch, sgd=False):
    opt, sched = make_optimizer(model, OptimSection(lr=1e-2, warmup_steps=0))
    if sgd:
        # Plain SGD without clipping: Adam's first step and clipping are blind to the gradient's scale,
        # and a wrong normalisation across ranks is exactly a scale error.
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return train_step(model, opt, sched, batch, LossConfig(), fp32_lm_head=True, grad_clip=1e9 if sgd else 1.0)


def test_single_rank_step_changes_parameters_and_logs():
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    batch, _ = build_batch(groups(), "batch", True)
    stats = _one_step(model, batch)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for key in ("loss", "mean_ratio", "clip_frac", "entropy", "grad_norm"):
        assert np.isfinite(stats[key]), key
    assert stats["entropy"] > 0 and stats["trained_tokens"] == int(batch.loss_mask.sum())


def _rank_main(rank, world_size, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model = tiny_model()
        batch = build_batch(groups(), "batch", True)[0] if rank == 0 else None
        batch = broadcast_batch(batch)
        _one_step(model, batch, sgd=True)
        if rank == 0:
            save_file(
                {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
                os.path.join(out_dir, "two_ranks.safetensors"),
            )
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_rank(tmp_path):
    model = tiny_model()
    batch, _ = build_batch(groups(), "batch", True)
    _one_step(model, batch, sgd=True)
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    two = load_file(str(tmp_path / "two_ranks.safetensors"))
    for name, p in model.state_dict().items():
        if name in two:
            torch.testing.assert_close(two[name], p, rtol=1e-5, atol=1e-6, msg=name)
