"""FSDP2 sharding, the chunked FP32-head logprob path, activation checkpointing and micro-batches, as ratios.

A random-initialised Qwen3-architecture model (~103M parameters: vocabulary 151936 tied, hidden 512, 8 layers),
built from a config; nothing is downloaded. CPU, gloo. Three tables, each variant side by side with its baseline:

1. shard: per-rank parameter, gradient and AdamW-state bytes after one step, 2 FSDP2 ranks vs 1 plain rank
   (exact tensor accounting: the local shard of every DTensor, not a memory reading).
2. logprob: peak resident memory (getrusage ru_maxrss, a fresh process per variant, minus the same process's
   resident size just before the measured call) of log-probs + entropy + backward over T tokens against a
   151936 vocabulary: chunked (logprob_chunk_tokens) vs one unchunked FP32 head.
3. throughput: trainer tokens/s of train_step (forward, backward, AdamW) on the model (median of --steps after a
   warm-up step), and the peak RSS growth from just before the first step (so gradients and AdamW state, equal in
   every variant, plus the activations that differ), with activation checkpointing vs without, and micro-batched
   vs one batch.

Run: flock /tmp/scalerl-heavy.lock python bench/bench_parallel.py [--tokens 4096] [--only shard,logprob,throughput]
A few minutes on 2 cores; --tokens is the logprob sequence (8192 needs ~20 GB for the unchunked variant).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

VOCAB = 151936
ARCH = dict(
    vocab_size=VOCAB,
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
)
if os.environ.get("BENCH_SMALL"):  # a seconds-long check of this script itself, not a measurement
    VOCAB = 4096
    ARCH.update(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2)


def build_model(seed=0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    return Qwen3ForCausalLM(Qwen3Config(**ARCH))


def synthetic_batch(n_groups, samples, prompt, completion, seed=0):
    """A TrainBatch of n_groups x samples rows of prompt + completion tokens (lengths vary by up to 25%)."""
    from scalerl.shared.wire.messages import Rollout
    from scalerl.trainer_service.batch import build_batch

    rng = np.random.default_rng(seed)
    groups = []
    for g in range(n_groups):
        p = rng.integers(10, VOCAB, prompt).astype(np.int32)
        rows = []
        for k in range(samples):
            n = int(completion * rng.uniform(0.75, 1.0))
            rows.append(
                Rollout(
                    group_id=str(g),
                    sample_index=k,
                    prompt_ids=p,
                    completion_ids=rng.integers(10, VOCAB, n).astype(np.int32),
                    logprobs=(-rng.random(n) * 5).astype(np.float32),
                    versions=np.zeros(n, np.int32),
                    forced=np.zeros(n, np.uint8),
                    finish_reason="stop",
                    reward=float(k % 2),
                    t_queued=0.0,
                    t_started=0.0,
                    t_finished=0.0,
                )
            )
        groups.append(rows)
    return build_batch(groups, "batch", True)[0]


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# -- 1. shard ------------------------------------------------------------------------------------------------------
def local_bytes(t: torch.Tensor) -> int:
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


def _one_step_bytes(model) -> dict:
    from scalerl.trainer_service.config import OptimSection
    from scalerl.trainer_service.loss import LossConfig
    from scalerl.trainer_service.step import StepConfig, make_optimizer, train_step

    opt, sched = make_optimizer(model, OptimSection())
    train_step(model, opt, sched, synthetic_batch(2, 2, 16, 16), LossConfig(), StepConfig())
    params = list(model.parameters())
    return {
        "parameters": sum(local_bytes(p) for p in params),
        "gradients": sum(local_bytes(p.grad) for p in params if p.grad is not None),
        "optimizer": sum(local_bytes(v) for s in opt.state.values() for v in s.values() if v.dim() > 0),
    }


def _shard_rank(rank, world, init_file, out):
    import torch.distributed as dist

    from scalerl.trainer_service.config import TrainerConfig
    from scalerl.trainer_service.parallel import init_distributed, shard_model

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = TrainerConfig(device="cpu")
        model = shard_model(build_model(), init_distributed(cfg), cfg)
        got = _one_step_bytes(model)
        with open(f"{out}.{rank}", "w") as f:
            json.dump(got, f)
    finally:
        dist.destroy_process_group()


def bench_shard() -> list[str]:
    import torch.multiprocessing as mp

    one = _one_step_bytes(build_model())
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_shard_rank, args=(2, f"{tmp}/init", f"{tmp}/out"), nprocs=2, join=True)
        ranks = [json.load(open(f"{tmp}/out.{r}")) for r in range(2)]
    n = sum(p.numel() for p in build_model().parameters())
    lines = [
        f"## per-rank bytes after one AdamW step, FSDP2 at 2 ranks vs 1 plain rank ({n / 1e6:.1f}M parameters, FP32)",
        "| | 1 rank | 2 ranks: rank 0 | rank 1 | ratio (max rank / 1 rank) |",
        "|---|---|---|---|---|",
    ]
    for key in ("parameters", "gradients", "optimizer"):
        r = max(x[key] for x in ranks) / one[key]
        lines.append(
            f"| {key} | {one[key] / 2**20:.1f} MiB | {ranks[0][key] / 2**20:.1f} MiB | "
            f"{ranks[1][key] / 2**20:.1f} MiB | {r:.3f} |"
        )
    tot1, tot2 = sum(one.values()), max(sum(x.values()) for x in ranks)
    lines.append(f"| total | {tot1 / 2**20:.1f} MiB | | | {tot2 / tot1:.3f} |")
    return lines


# -- 2. logprob ----------------------------------------------------------------------------------------------------
def child_logprob(tokens: int, chunk: int) -> dict:
    from scalerl.trainer_service.policy import head_logprobs

    torch.manual_seed(0)
    h = torch.randn(tokens, ARCH["hidden_size"], requires_grad=True)
    w = (torch.randn(VOCAB, ARCH["hidden_size"]) * 0.02).requires_grad_()
    t = torch.randint(0, VOCAB, (tokens,))
    base = rss_now()
    t0 = time.perf_counter()
    lp, ent = head_logprobs(h, w, None, t, True, chunk)
    lp.sum().backward()
    return {"peak_above_inputs": peak_rss() - base, "seconds": time.perf_counter() - t0}


def bench_logprob(tokens: int, chunk: int) -> list[str]:
    got = {
        name: run_child("logprob", tokens=tokens, chunk=c) for name, c in (("unchunked", tokens), ("chunked", chunk))
    }
    full = tokens * VOCAB * 4
    u, c = got["unchunked"], got["chunked"]
    return [
        f"## logprob path, {tokens} tokens x vocabulary {VOCAB}, FP32 head, forward + backward "
        f"(one FP32 logits tensor = {full / 2**30:.2f} GiB)",
        "| | unchunked | chunked ({} tokens) | ratio |".format(chunk),
        "|---|---|---|---|",
        f"| peak RSS above inputs (ru_maxrss) | {u['peak_above_inputs'] / 2**30:.2f} GiB | "
        f"{c['peak_above_inputs'] / 2**30:.2f} GiB | {c['peak_above_inputs'] / u['peak_above_inputs']:.3f} |",
        f"| time | {u['seconds']:.2f} s | {c['seconds']:.2f} s | {c['seconds'] / u['seconds']:.2f} |",
    ]


# -- 3. throughput -------------------------------------------------------------------------------------------------
def child_throughput(ac: bool, budget: int, rows: int, length: int, steps: int) -> dict:
    from scalerl.trainer_service.config import OptimSection, TrainerConfig
    from scalerl.trainer_service.loss import LossConfig
    from scalerl.trainer_service.parallel import init_distributed, shard_model
    from scalerl.trainer_service.step import StepConfig, make_optimizer, train_step

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    cfg = TrainerConfig(device="cpu", activation_checkpointing=ac, step=StepConfig(max_tokens_per_microbatch=budget))
    model = shard_model(build_model(), init_distributed(cfg), cfg)
    batch = synthetic_batch(rows // 4, 4, length // 4, length - length // 4)
    opt, sched = make_optimizer(model, OptimSection())
    step = cfg.step
    base = rss_now()  # before the warm-up step: the growth includes gradients and AdamW state, the same in all
    train_step(model, opt, sched, batch, LossConfig(), step)  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        train_step(model, opt, sched, batch, LossConfig(), step)
        times.append(time.perf_counter() - t0)
    tokens = int(batch.attention_mask.sum())
    return {"tokens_per_s": tokens / float(np.median(times)), "peak_above_step": peak_rss() - base, "tokens": tokens}


def bench_throughput(rows: int, length: int, steps: int) -> list[str]:
    variants = [
        ("one batch", dict(ac=False, budget=0)),
        ("activation checkpointing", dict(ac=True, budget=0)),
        (f"micro-batches of {length * 2} tokens", dict(ac=False, budget=length * 2)),
    ]
    got = {name: run_child("throughput", rows=rows, length=length, steps=steps, **kw) for name, kw in variants}
    base = got["one batch"]
    lines = [
        f"## trainer step (train_step, AdamW), {rows} rows x ~{length} tokens = {base['tokens']} tokens, "
        f"{os.environ.get('BENCH_THREADS', '2')} CPU threads",
        "| | tokens/s | ratio | peak RSS growth from before the first step (ru_maxrss) | ratio |",
        "|---|---|---|---|---|",
    ]
    for name, r in got.items():
        lines.append(
            f"| {name} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f} | "
            f"{r['peak_above_step'] / 2**20:.0f} MiB | "
            f"{r['peak_above_step'] / max(base['peak_above_step'], 1):.2f} |"
        )
    return lines


def run_child(kind: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--args", json.dumps(kw)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="shard,logprob,throughput")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--child")
    ap.add_argument("--args")
    a = ap.parse_args()
    if a.child:
        kw = json.loads(a.args)
        fn = {"logprob": child_logprob, "throughput": child_throughput}[a.child]
        print(json.dumps(fn(**kw)))
        return
    torch.set_num_threads(1)
    only = a.only.split(",")
    out: list[str] = []
    if "shard" in only:
        out += bench_shard() + [""]
    if "logprob" in only:
        out += bench_logprob(a.tokens, a.chunk) + [""]
    if "throughput" in only:
        out += bench_throughput(a.rows, a.length, a.steps)
    print("\n".join(out))


if __name__ == "__main__":
    main()
