"""The Python half of bench/gpu_smoke.sh: FSDP2 at world size 1 in bf16, then a long step with and without
activation checkpointing. One JSON line per check on stdout; exit 1 on the first failed check.

DEVICE=cuda (default) or cpu (a dry run of the same code: bf16 FSDP2 over a 1-rank gloo mesh on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_parallel import build_model, synthetic_batch  # noqa: E402


def emit(**kw):
    print(json.dumps(kw), flush=True)


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=151936,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            max_position_embeddings=512,
        )
    )


def check_fsdp(device_name: str) -> None:
    from torch.distributed.tensor import DTensor

    from scalerl.trainer_service.config import OptimSection, TrainerConfig
    from scalerl.trainer_service.loss import LossConfig
    from scalerl.trainer_service.parallel import full_state_dict, init_distributed, shard_model
    from scalerl.trainer_service.policy import sequence_logprobs
    from scalerl.trainer_service.step import StepConfig, broadcast_batch, make_optimizer, train_step

    cfg = TrainerConfig(device=device_name, param_dtype="bfloat16", max_tokens_per_microbatch=256)
    d = init_distributed(cfg)
    assert d.uses_fsdp and d.param_dtype == torch.bfloat16 and d.world == 1, d
    reference = tiny_qwen2().to(d.device)  # FP32, unsharded
    model = shard_model(tiny_qwen2(), d, cfg)
    p = next(model.parameters())
    assert isinstance(p, DTensor) and p.dtype == torch.float32 and p.device.type == d.device.type, p
    batch = broadcast_batch(synthetic_batch(4, 4, 24, 40), d.device, d.cpu_group)
    assert batch.input_ids.device.type == d.device.type
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, batch.input_ids, batch.attention_mask, score_mask=batch.loss_mask > 0)
        ref, _ = sequence_logprobs(reference, batch.input_ids, batch.attention_mask, score_mask=batch.loss_mask > 0)
    m = batch.loss_mask > 0
    head_err = float((lp[m] - ref[m]).abs().max())
    assert lp.dtype == torch.float32 and head_err < 0.1, head_err  # bf16 body, FP32 head vs all-FP32
    before = {k: v.clone() for k, v in full_state_dict(model).items()}
    opt, sched = make_optimizer(model, OptimSection(lr=1e-4, warmup_steps=0))
    stats = [train_step(model, opt, sched, batch, LossConfig(), StepConfig.of(cfg)) for _ in range(2)]
    after = full_state_dict(model)
    changed = sum(not torch.equal(before[k], after[k]) for k in after)
    assert all(np.isfinite(s["loss"]) and np.isfinite(s["grad_norm"]) for s in stats), stats
    assert changed > 0 and all(v.dtype == torch.float32 and v.device.type == "cpu" for v in after.values())
    emit(
        check="fsdp2_world1_bf16",
        ok=True,
        device=str(d.device),
        head_max_abs_err_vs_fp32=head_err,
        loss=stats[-1]["loss"],
        grad_norm=stats[-1]["grad_norm"],
        tensors_changed=changed,
    )


def long_step(device_name: str, tokens: int, ac: bool, steps: int) -> None:
    from scalerl.trainer_service.config import OptimSection, TrainerConfig
    from scalerl.trainer_service.loss import LossConfig
    from scalerl.trainer_service.parallel import init_distributed, shard_model
    from scalerl.trainer_service.step import StepConfig, make_optimizer, train_step

    cfg = TrainerConfig(device=device_name, param_dtype="bfloat16", activation_checkpointing=ac)
    d = init_distributed(cfg)
    model = shard_model(build_model(), d, cfg)
    rows = 4
    batch = synthetic_batch(1, rows, tokens // rows // 4, tokens // rows - tokens // rows // 4)
    batch = type(batch)(*(getattr(batch, f).to(d.device) for f in batch.__dataclass_fields__))
    opt, sched = make_optimizer(model, OptimSection())
    step = StepConfig.of(cfg)
    train_step(model, opt, sched, batch, LossConfig(), step)  # warm-up (allocator, kernels)
    if d.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(d.device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        s = train_step(model, opt, sched, batch, LossConfig(), step)
        if d.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    n = int(batch.attention_mask.sum())
    emit(
        check="long_step",
        ok=bool(np.isfinite(s["loss"])),
        activation_checkpointing=ac,
        device=str(d.device),
        tokens=n,
        tokens_per_s=n / float(np.median(times)),
        peak_memory_gib=peak_bytes(d.device) / 2**30,
        peak_kind="torch.cuda.max_memory_allocated" if d.device.type == "cuda" else "ru_maxrss (process)",
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("check", choices=["fsdp", "long"])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--ac", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    device = os.environ.get("DEVICE", "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("DEVICE=cuda but torch sees no GPU (DEVICE=cpu runs the dry mode)")
    try:
        if a.check == "fsdp":
            check_fsdp(device)
        else:
            long_step(device, a.tokens, bool(a.ac), a.steps)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
