"""Torch engine vs transformers `generate`, same model, prompts and token count, one run.

    python bench/bench_engine.py [--batch 64] [--prompt-len 32] [--new-tokens 128] [--reps 3] [--threads 1]

Prints tokens/s of both (best and median of interleaved repetitions, so a noisy shared CPU
hurts both alike) and their ratio, then the generation pause of an in-flight weight update
(update_weights of the full state dict between two decode steps) next to one decode step.
The model is a seeded random ~0.75M-parameter Qwen2 (vocab 64, hidden 128, 4 layers,
4 heads, 2 KV heads, intermediate 344); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from scalerl.generator_service.backend import EngineRequest, EngineSampling
from scalerl.generator_service.engine.torch_engine import TorchEngine, TorchEngineConfig


def tiny_qwen2(seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=64,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=344,
        max_position_embeddings=4096,
    )
    return Qwen2ForCausalLM(cfg).eval()


def engine_tokens_per_s(engine: TorchEngine, prompts: torch.Tensor, new_tokens: int, rep: int) -> float:
    params = EngineSampling(temperature=1.0, top_p=1.0, max_new_tokens=new_tokens)
    engine.add_requests([EngineRequest(f"{rep}-{i}", tuple(p.tolist()), params) for i, p in enumerate(prompts)])
    t0 = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
    elapsed = time.perf_counter() - t0
    produced = sum(len(c.token_ids) for c in engine.collect_finished())
    assert produced == prompts.shape[0] * new_tokens, produced
    return produced / elapsed


@torch.no_grad()
def generate_tokens_per_s(model: Qwen2ForCausalLM, prompts: torch.Tensor, new_tokens: int) -> float:
    t0 = time.perf_counter()
    out = model.generate(
        prompts,
        attention_mask=torch.ones_like(prompts),
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        eos_token_id=None,
        pad_token_id=0,
    )
    elapsed = time.perf_counter() - t0
    produced = (out.shape[1] - prompts.shape[1]) * prompts.shape[0]
    assert produced == prompts.shape[0] * new_tokens, produced
    return produced / elapsed


def update_pause(engine: TorchEngine, prompts: torch.Tensor, new_weights: dict, updates: int) -> tuple[float, float]:
    """Median ms of update_weights and of a plain decode step, with the batch mid-generation."""
    params = EngineSampling(temperature=1.0, max_new_tokens=2 * updates + 8)
    engine.add_requests([EngineRequest(f"u{i}", tuple(p.tolist()), params) for i, p in enumerate(prompts)])
    engine.step()
    pauses, steps = [], []
    for version in range(1, updates + 1):
        t0 = time.perf_counter()
        engine.step()
        steps.append(time.perf_counter() - t0)
        pauses.append(engine.update_weights(new_weights, version))
    while engine.has_unfinished():
        engine.step()
    versions = {int(v) for c in engine.collect_finished() for v in c.versions}
    assert versions == set(range(updates + 1)), versions
    return statistics.median(pauses) * 1e3, statistics.median(steps) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = tiny_qwen2(0)
    n_params = sum(p.numel() for p in model.parameters())
    engine = TorchEngine(
        copy.deepcopy(model),
        TorchEngineConfig(max_batch=args.batch, max_seq_len=args.prompt_len + args.new_tokens + 64),
    )
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, 64, (args.batch, args.prompt_len), generator=gen)

    # Warm-up both, then interleave so load changes on the machine hit both sides.
    engine_tokens_per_s(engine, prompts, 8, -1)
    generate_tokens_per_s(model, prompts, 8)
    eng, hf = [], []
    for rep in range(args.reps):
        eng.append(engine_tokens_per_s(engine, prompts, args.new_tokens, rep))
        hf.append(generate_tokens_per_s(model, prompts, args.new_tokens))

    pause_ms, step_ms = update_pause(engine, prompts, tiny_qwen2(1).state_dict(), updates=10)

    print(f"model: Qwen2 {n_params / 1e6:.2f}M params, fp32, threads={args.threads}")
    print(
        f"batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens, sampling T=1 top_p=1, "
        f"{args.reps} interleaved reps"
    )
    print(f"{'':28s}{'best tok/s':>12s}{'median tok/s':>14s}")
    print(f"{'transformers generate':28s}{max(hf):12.0f}{statistics.median(hf):14.0f}")
    print(f"{'scalerl torch engine':28s}{max(eng):12.0f}{statistics.median(eng):14.0f}")
    print(
        f"{'ratio engine/generate':28s}{max(eng) / max(hf):12.2f}{statistics.median(eng) / statistics.median(hf):14.2f}"
    )
    print(
        f"weight update pause (full state dict, {n_params / 1e6:.2f}M params): median {pause_ms:.2f} ms; "
        f"one decode step at batch {args.batch}: median {step_ms:.2f} ms"
    )


if __name__ == "__main__":
    main()
