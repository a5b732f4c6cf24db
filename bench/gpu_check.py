"""The Python half of bench/gpu_check.sh: one step per call, one JSON line on stdout.

    python3 bench/gpu_check.py STEP --device cuda|cpu

Steps: versions, fsdp, head, memory8b, publish, dcp, pipeline (see docs/scaling.md, "The prepared GPU check").
Every step goes through the project's own code (parallel.init_distributed / shard_model, step.train_step,
policy.sequence_logprobs, checkpoint.save_checkpoint / load_checkpoint, publisher.weight_stream with
shared/wire/weights, `scalerl train`). On cpu the same code runs with tiny shapes: the figures are not
measurements, the point is that the code path works. A step that cannot run on cpu prints "skipped".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_parallel import synthetic_batch  # noqa: E402

GIB = 2**30
VOCAB = 151936  # synthetic_batch draws token ids below this, so every shape keeps Qwen3's vocabulary
QWEN3_1P7B = dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)  # fmt: skip
QWEN3_8B = dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, tie_word_embeddings=False)  # fmt: skip
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)  # fmt: skip
# docs/scaling.md, "Qwen3-8B on 8 H100-80GB: memory per GPU": checkpointed layer inputs 0.29 MB a token over 36
# layers, and the whole per-GPU total as 28 GB + M x 0.44 MB.
DOCS_ACT_BYTES_PER_TOKEN_LAYER = 36 * 4096 * 2 / 36
DOCS_TOTAL_GB = (28.0, 0.44e6)


def emit(**kw) -> None:
    print(json.dumps(kw, default=str), flush=True)


def qwen3(shape: dict, device: torch.device, layers: int | None = None, seed: int = 0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    arch = dict(shape, vocab_size=VOCAB, max_position_embeddings=8192)
    if layers is not None:
        arch["num_hidden_layers"] = layers
    torch.manual_seed(seed)
    # Built on the device itself: initialising 2B parameters on the host would take a minute of the budget.
    with torch.device(device):
        return Qwen3ForCausalLM(Qwen3Config(**arch))


def batch_of(tokens: int, rows: int = 8, seed: int = 0):
    """About `tokens` tokens in `rows` rows (completions vary by up to 25%, so ~7/8 of it)."""
    per_row = tokens // rows
    return synthetic_batch(2, rows // 2, per_row // 8, per_row - per_row // 8, seed=seed)


def trainer(device: str, **kw):
    from scalerl.trainer_service.config import TrainerConfig
    from scalerl.trainer_service.parallel import init_distributed

    cfg = TrainerConfig(device=device, param_dtype="bfloat16", **kw)
    return cfg, init_distributed(cfg)


def on_device(batch, device: torch.device):
    """A TrainBatch with its tensors on `device`, ahead of the timed steps (routed_experts is None for a dense
    model: it stays as it is)."""
    import dataclasses

    moved = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    return dataclasses.replace(batch, **{k: v.to(device) for k, v in moved.items() if v is not None})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


# -- body vs head timing ---------------------------------------------------------------------------------------------
class Marks:
    """Body and head time of each train_step, from CUDA events (wall clock on cpu). The head is policy.head_logprobs,
    wrapped where token_logprobs looks it up; its backward is bracketed by identity autograd functions on its output
    and input. The body's forward starts at the body's pre-hook, its backward ends when the gradient reaches the
    embeddings' output. Memory (CUDA only): the head's own peak above what was allocated when it started, and the
    forward + backward's peak above what was allocated when the body started (weights, gradients and AdamW state
    after the warm-up step), so that what the activations cost is not mixed with the optimizer step's temporaries."""

    def __init__(self, model, device: torch.device):
        from scalerl.trainer_service import policy

        self.device, self.policy = device, policy
        self.events: dict[str, list] = {}
        self.head_peak = self.peak = self.fb_peak = 0
        self._base = self._fb_base = 0
        self._in_fb = False
        self._orig = policy.head_logprobs
        marks = self

        class Edge(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, name):
                ctx.name = name
                return x.view_as(x)

            @staticmethod
            def backward(ctx, g):
                marks.mark(ctx.name)
                return g, None

        def head_b0_mem(name):
            marks.mark(name)
            marks.mem_start()

        class HeadOut(Edge):  # the head's backward starts here: its peak is measured from this point
            @staticmethod
            def backward(ctx, g):
                head_b0_mem(ctx.name)
                return g, None

        class HeadIn(Edge):
            @staticmethod
            def backward(ctx, g):
                marks.mem_stop()
                marks.mark(ctx.name)
                return g, None

        def head_wrapped(hidden, *a, **k):
            self.mark("head_f0")
            self.mem_start()
            lp, ent = self._orig(HeadIn.apply(hidden, "head_b1"), *a, **k)
            self.mem_stop()
            self.mark("head_f1")
            return HeadOut.apply(lp, "head_b0"), ent

        policy.head_logprobs = head_wrapped
        inner = model.model
        self._hooks = [
            inner.register_forward_pre_hook(self._body_start, with_kwargs=True),
            inner.embed_tokens.register_forward_hook(self._embed_hook),
        ]

    def _body_start(self, module, args, kwargs):
        self.mark("body_f0")
        if self.device.type == "cuda":
            self._fold()
            self._fb_base = torch.cuda.memory_allocated(self.device)
            self._in_fb = True
            torch.cuda.reset_peak_memory_stats(self.device)

    def _embed_hook(self, module, args, out):
        if out.requires_grad:
            out.register_hook(self._body_end)

    def _body_end(self, grad):
        self.mark("body_b1")
        if self.device.type == "cuda":
            self._fold()
            self._in_fb = False

    def _fold(self) -> int:
        """Take the allocator's peak since its last reset into the running peaks (before any reset)."""
        p = torch.cuda.max_memory_allocated(self.device)
        self.peak = max(self.peak, p)
        if self._in_fb:
            self.fb_peak = max(self.fb_peak, p - self._fb_base)
        return p

    def mark(self, name: str) -> None:
        if self.device.type == "cuda":
            e = torch.cuda.Event(enable_timing=True)
            e.record()
        else:
            e = time.perf_counter()
        self.events.setdefault(name, []).append(e)

    def mem_start(self) -> None:
        if self.device.type == "cuda":
            self._fold()
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def mem_stop(self) -> None:
        if self.device.type == "cuda":
            self.head_peak = max(self.head_peak, self._fold() - self._base)

    def step_peak(self) -> int:
        return max(self.peak, torch.cuda.max_memory_allocated(self.device)) if self.device.type == "cuda" else 0

    def reset(self) -> None:
        self.events.clear()
        self.head_peak = self.peak = self.fb_peak = 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def seconds(self) -> tuple[float, float]:
        """(body, head) seconds summed over the marked steps."""
        sync(self.device)

        def dt(a, b):
            return a.elapsed_time(b) / 1e3 if self.device.type == "cuda" else b - a

        ev = self.events
        body = head = 0.0
        for i in range(len(ev.get("head_f0", []))):
            head += dt(ev["head_f0"][i], ev["head_f1"][i]) + dt(ev["head_b0"][i], ev["head_b1"][i])
            body += dt(ev["body_f0"][i], ev["head_f0"][i]) + dt(ev["head_b1"][i], ev["body_b1"][i])
        return body, head

    def close(self) -> None:
        self.policy.head_logprobs = self._orig
        for h in self._hooks:
            h.remove()


# -- steps -----------------------------------------------------------------------------------------------------------
def step_versions(device: str) -> dict:
    import transformers

    out: dict = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "cuda_available": torch.cuda.is_available(),
        "nccl_available": torch.distributed.is_nccl_available(),
        "sdpa_flash": torch.backends.cuda.flash_sdp_enabled(),
    }
    from importlib.metadata import PackageNotFoundError, version

    for dist_name in ("pyzmq", "msgpack", "tomli-w", "safetensors", "scipy", "click", "rich", "vllm", "flash-attn"):
        try:
            out[dist_name] = version(dist_name)
        except PackageNotFoundError:
            out[dist_name] = None
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        out.update(
            gpu=p.name,
            capability=f"{p.major}.{p.minor}",
            memory_gib=round(p.total_memory / GIB, 1),
            multiprocessors=p.multi_processor_count,
            bf16_supported=torch.cuda.is_bf16_supported(),
            nccl_version=".".join(map(str, v)) if isinstance(v := torch.cuda.nccl.version(), tuple) else str(v),
        )
    import scalerl.trainer_service as ts

    out["scalerl_from"] = os.path.dirname(os.path.dirname(os.path.realpath(ts.__file__)))
    return {"ok": True, **out}


def step_fsdp(device: str) -> dict:
    from torch.distributed.tensor import DTensor

    from scalerl.trainer_service.config import OptimSection
    from scalerl.trainer_service.loss import LossConfig
    from scalerl.trainer_service.parallel import full_state_dict, shard_model
    from scalerl.trainer_service.policy import sequence_logprobs
    from scalerl.trainer_service.step import StepConfig, broadcast_batch, make_optimizer, train_step

    cfg, d = trainer(device, step=StepConfig(max_tokens_per_microbatch=256))
    assert d.uses_fsdp and d.param_dtype == torch.bfloat16 and d.world == 1, d
    reference = qwen3(TINY, d.device)  # FP32, unsharded: what the bf16 body with its FP32 head is compared with
    model = shard_model(qwen3(TINY, d.device), d, cfg)
    p = next(model.parameters())
    assert isinstance(p, DTensor) and p.dtype == torch.float32 and p.device.type == d.device.type, p
    batch = broadcast_batch(synthetic_batch(4, 4, 24, 40), d.device, d.cpu_group)
    m = batch.loss_mask > 0
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, batch.input_ids, batch.attention_mask, score_mask=m)
        ref, _ = sequence_logprobs(reference, batch.input_ids, batch.attention_mask, score_mask=m)
    head_err = float((lp[m] - ref[m]).abs().max())
    before = {k: v.clone() for k, v in full_state_dict(model).items()}
    opt, sched = make_optimizer(model, OptimSection(lr=1e-4, warmup_steps=0))
    step_cfg = cfg.step
    stats = [train_step(model, opt, sched, batch, LossConfig(), step_cfg)]  # warm-up: allocator, lazy init
    syncs = None
    if d.device.type == "cuda":
        # Every host-device synchronisation of one step: each one stalls the CPU's kernel queue.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                stats.append(train_step(model, opt, sched, batch, LossConfig(), step_cfg))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        msgs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
        syncs = {"count": len(msgs), "first": sorted(set(msgs))[:3]}
    else:
        stats.append(train_step(model, opt, sched, batch, LossConfig(), step_cfg))
    after = full_state_dict(model)
    changed = sum(not torch.equal(before[k], after[k]) for k in after)
    ok = (
        head_err < 0.1
        and lp.dtype == torch.float32
        and all(np.isfinite(s["loss"]) and np.isfinite(s["grad_norm"]) for s in stats)
        and changed > 0
        and all(v.dtype == torch.float32 and v.device.type == "cpu" for v in after.values())
    )
    return {
        "ok": bool(ok),
        "microbatches_of": 256,
        "head_max_abs_err_vs_fp32": head_err,
        "loss": stats[-1]["loss"],
        "grad_norm": stats[-1]["grad_norm"],
        "tensors_changed": changed,
        "syncs_per_step": syncs,
    }


@contextlib.contextmanager
def fp32_gemm_head():
    """policy.head_path forced to "fp32" (FP32 copies, an FP32 GEMM on CUDA cores): the head as it was before the
    tensor-core path, which head_path picks by itself on CUDA with bf16 operands."""
    from scalerl.trainer_service import policy

    chosen = policy.head_path
    policy.head_path = lambda fp32, *a: "fp32" if fp32 else "native"
    try:
        yield
    finally:
        policy.head_path = chosen


def _timed_steps(model, d, cfg, step_cfg, batch, steps: int) -> dict:
    from scalerl.trainer_service.config import OptimSection
    from scalerl.trainer_service.loss import LossConfig
    from scalerl.trainer_service.step import make_optimizer, train_step

    opt, sched = make_optimizer(model, OptimSection(lr=1e-6, warmup_steps=0))
    marks = Marks(model, d.device)
    try:
        train_step(model, opt, sched, batch, LossConfig(), step_cfg)  # warm-up: allocator, kernels, lazy state
        sync(d.device)
        marks.reset()
        t0 = time.perf_counter()
        stats = [train_step(model, opt, sched, batch, LossConfig(), step_cfg) for _ in range(steps)]
        sync(d.device)
        wall = time.perf_counter() - t0
        body, head = marks.seconds()
        peak = marks.step_peak()
        head_peak = marks.head_peak
        fb_peak = marks.fb_peak
    finally:
        marks.close()
    del opt, sched
    n = int(batch.attention_mask.sum())
    return {
        "tokens_per_step": n,
        "scored_tokens_per_step": int(batch.loss_mask.sum()),
        "tokens_per_s": round(n * steps / wall, 1),
        "step_s": round(wall / steps, 3),
        "body_s": round(body / steps, 3),
        "head_s": round(head / steps, 3),
        "peak_gib": None if d.device.type != "cuda" else round(peak / GIB, 2),
        "head_peak_gib": None if d.device.type != "cuda" else round(head_peak / GIB, 2),
        "fwd_bwd_peak_above_states_gib": None if d.device.type != "cuda" else round(fb_peak / GIB, 3),
        "loss": stats[-1]["loss"],
        "grad_norm": stats[-1]["grad_norm"],
        "finite": all(np.isfinite(s["loss"]) and np.isfinite(s["grad_norm"]) for s in stats),
    }


def step_head(device: str) -> dict:
    from scalerl.trainer_service import policy
    from scalerl.trainer_service.parallel import shard_model

    cuda = device == "cuda"
    cfg, d = trainer(device, activation_checkpointing=True)
    shape, tokens = (QWEN3_1P7B, 32768) if cuda else (TINY, 512)
    model = shard_model(qwen3(shape, d.device), d, cfg)
    n_params = sum(p.numel() for p in model.parameters())
    batch = batch_of(tokens)
    batch = on_device(batch, d.device)
    step_cfg = cfg.step
    out: dict = {"shape": "Qwen3-1.7B" if cuda else "tiny", "parameters": n_params, "activation_checkpointing": True}
    head_path = getattr(policy, "head_path", None)
    if head_path is None:
        out["fp32_head"] = base = _timed_steps(model, d, cfg, step_cfg, batch, 2)
        out["tensor_core_head"] = "not available (trainer_service.policy has no head_path)"
        return {"ok": bool(base["finite"]), **out}
    with fp32_gemm_head():
        out["fp32_head"] = base = _timed_steps(model, d, cfg, step_cfg, batch, 2)
    mm_ok = cuda and policy.mm_out_dtype_available(str(d.device))
    path = head_path(True, d.device.type, torch.bfloat16, torch.bfloat16, mm_ok)
    if path == "fp32":
        out["tensor_core_head"] = f"not on {device}: policy.head_path keeps the FP32 GEMM here"
        return {"ok": bool(base["finite"]), **out}
    fast = _timed_steps(model, d, cfg, step_cfg, batch, 2)
    out["tensor_core_head"] = {"path": path, **fast}
    out["speedup"] = round(fast["tokens_per_s"] / base["tokens_per_s"], 3)
    out["head_speedup"] = round(base["head_s"] / fast["head_s"], 3) if fast["head_s"] > 0 else None
    # Same weights, both heads, no gradient: how far the tensor-core products move the logprobs the loss sees.
    m = batch.loss_mask > 0
    with torch.no_grad():
        with fp32_gemm_head():
            a, _ = policy.sequence_logprobs(model, batch.input_ids, batch.attention_mask, score_mask=m)
        b, _ = policy.sequence_logprobs(model, batch.input_ids, batch.attention_mask, score_mask=m)
    out["max_abs_logprob_change"] = float((a[m] - b[m]).abs().max())
    out["mean_abs_logprob_change"] = float((a[m] - b[m]).abs().mean())
    return {"ok": bool(base["finite"] and fast["finite"]), **out}


def step_memory8b(device: str) -> dict:
    """Peak memory of Qwen3-8B's shape with 2 and 4 layers at world 1: the difference is what a layer costs. A
    layer's FP32 weights, gradients and AdamW state (16 bytes a parameter) are counted exactly and taken out; the
    rest is its activations. Then, for 36 layers over 8 FSDP2 ranks, each rank holds 1/8 of the states and all of its
    own tokens' activations."""
    from scalerl.trainer_service.parallel import shard_model

    cuda = device == "cuda"
    cfg, d = trainer(device, activation_checkpointing=True)
    shape, tokens = (QWEN3_8B, 16384) if cuda else (TINY, 256)
    batch = batch_of(tokens)
    batch = on_device(batch, d.device)
    runs = {}
    for layers in (2, 4):
        model = shard_model(qwen3(shape, d.device, layers=layers), d, cfg)
        n_params = sum(p.numel() for p in model.parameters())
        runs[layers] = {"parameters": n_params, **_timed_steps(model, d, cfg, cfg.step, batch, 1)}
        del model
        if cuda:
            torch.cuda.empty_cache()
    ok = all(r["finite"] for r in runs.values())
    out: dict = {"shape": "Qwen3-8B" if cuda else "tiny", "tokens": runs[4]["tokens_per_step"]}
    keys = ("parameters", "peak_gib", "fwd_bwd_peak_above_states_gib", "head_peak_gib", "step_s")
    out["runs"] = {f"{k}_layers": {x: r[x] for x in keys} for k, r in runs.items()}
    if not cuda:
        return {"ok": bool(ok), **out, "memory": "needs CUDA (torch.cuda.max_memory_allocated)"}
    tok = out["tokens"]
    layer_params = (runs[4]["parameters"] - runs[2]["parameters"]) / 2
    full_params = runs[2]["parameters"] + 34 * layer_params  # 36 layers
    # What one more layer costs in the forward + backward: its checkpointed input (and nothing else, if
    # checkpointing works), measured above the states so that the optimizer's temporaries stay out of it.
    fb = {k: r["fwd_bwd_peak_above_states_gib"] * GIB for k, r in runs.items()}
    act = (fb[4] - fb[2]) / 2
    head_peak = max(r["head_peak_gib"] for r in runs.values()) * GIB
    # One of 8 ranks at the same tokens per rank: an eighth of the FP32 weights, gradients and AdamW state (16 bytes
    # a parameter), the 4-layer forward + backward peak measured here (the bf16 casts of the root and of the layer
    # at work, the head, one recomputed layer) and the checkpointed inputs of the 32 layers more.
    extrapolated = 16 * full_params / 8 + fb[4] + 32 * act
    # The step's whole peak also holds what the optimizer step allocates: measured at 4 layers above states+fwd/bwd.
    out.update(
        parameters_36_layers=int(full_params),
        per_layer_states_gib=round(16 * layer_params / GIB, 3),
        per_layer_activation_gib=round(act / GIB, 4),
        per_layer_activation_bytes_per_token=round(act / tok, 1),
        docs_activation_bytes_per_token_layer=DOCS_ACT_BYTES_PER_TOKEN_LAYER,
        head_peak_gib=round(head_peak / GIB, 2),
        docs_head_gb="~2 (chunked logprob path) + 5.0 (FP32 head copy and gradient)",
        extrapolated_36_layers_8_ranks_gb=round(extrapolated / 1e9, 1),
        docs_estimate_gb=round(DOCS_TOTAL_GB[0] + tok * DOCS_TOTAL_GB[1] / 1e9, 1),
    )
    return {"ok": bool(ok), **out}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_publish(device: str) -> dict:
    from scalerl.shared.wire.weights.dist import DistWeightSender, open_weight_group
    from scalerl.shared.wire.weights.layout import BUCKET_BYTES, fill_buckets, plan_buckets
    from scalerl.trainer_service.parallel import shard_model
    from scalerl.trainer_service.publisher import weight_stream

    cuda = device == "cuda"
    cfg, d = trainer(device)
    model = shard_model(qwen3(QWEN3_1P7B if cuda else TINY, d.device), d, cfg)
    out: dict = {"shape": "Qwen3-1.7B" if cuda else "tiny"}

    def run(target: str | torch.device, pin: bool) -> dict:
        meta, pairs = weight_stream(model, torch.bfloat16)
        sizes, specs = plan_buckets(meta, BUCKET_BYTES)
        tensors = list(pairs)  # gathered first: what is timed is the bucket copy alone
        sync(d.device)
        t0 = time.perf_counter()
        fill_buckets(sizes, specs, iter(tensors), target, lambda b: None, pin_memory=pin)
        sync(d.device)
        s = time.perf_counter() - t0
        n = sum(sizes)
        return {"bytes": n, "buckets": len(sizes), "s": round(s, 4), "gb_per_s": round(n / s / 1e9, 2)}

    out["to_gpu"] = run(d.device, False) if cuda else "needs CUDA"
    out["to_pinned_cpu"] = run("cpu", True) if cuda else "needs CUDA"
    out["to_cpu"] = run("cpu", False)
    # The dist transport's sender over a group of one: the announcement has nobody to go to, the broadcasts are real.
    backend = "nccl" if cuda else "gloo"
    group = open_weight_group(f"tcp://127.0.0.1:{free_port()}", 0, 1, backend=backend, timeout_s=60)
    sender = DistWeightSender("tcp://127.0.0.1:*", group, n_receivers=0, device=d.device)
    try:
        meta, pairs = weight_stream(model, torch.bfloat16)
        t0 = time.perf_counter()
        update = sender.publish_stream(meta, pairs, 1, timeout_s=120)
        s = time.perf_counter() - t0
        nbytes = sum(update.bucket_sizes)
        out["broadcast"] = {"backend": backend, "ranks": 1, "bytes": nbytes, "buckets": len(update.bucket_sizes),
                            "s": round(s, 4), "gb_per_s_incl_gather": round(nbytes / s / 1e9, 2)}  # fmt: skip
    finally:
        sender.close()
    return {"ok": True, **out}


def step_dcp(device: str) -> dict:
    """Save after one step, take a second; load into a fresh model and optimizer, take the second again: the same
    loss and grad norm (the scheduler is constant, so it needs no state)."""
    from scalerl.trainer_service.checkpoint import load_checkpoint, save_checkpoint
    from scalerl.trainer_service.config import OptimSection
    from scalerl.trainer_service.loss import LossConfig
    from scalerl.trainer_service.parallel import shard_model
    from scalerl.trainer_service.step import make_optimizer, train_step

    cuda = device == "cuda"
    cfg, d = trainer(device)
    shape = dict(TINY, hidden_size=512, intermediate_size=1536, num_hidden_layers=4, head_dim=64) if cuda else TINY
    batch = synthetic_batch(2, 4, 64, 192) if cuda else synthetic_batch(2, 2, 16, 24)
    batch = on_device(batch, d.device)
    step_cfg = cfg.step

    def fresh(seed):
        model = shard_model(qwen3(shape, d.device, seed=seed), d, cfg)
        return (model, *make_optimizer(model, OptimSection(lr=1e-4, warmup_steps=0)))

    with tempfile.TemporaryDirectory() as tmp:
        model, opt, sched = fresh(0)
        train_step(model, opt, sched, batch, LossConfig(), step_cfg)
        t0 = time.perf_counter()
        path = save_checkpoint(tmp, 1, model, opt, {"check": "gpu_check"})
        save_s = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        want = train_step(model, opt, sched, batch, LossConfig(), step_cfg)
        del model, opt, sched
        model, opt, sched = fresh(1)  # other weights: the load must replace them all
        t0 = time.perf_counter()
        step, state = load_checkpoint(path, model, opt)
        load_s = time.perf_counter() - t0
        got = train_step(model, opt, sched, batch, LossConfig(), step_cfg)
    dl, dg = abs(got["loss"] - want["loss"]), abs(got["grad_norm"] - want["grad_norm"])
    params = next(model.parameters())
    ok = step == 1 and state == {"check": "gpu_check"} and dl <= 1e-6 * max(1, abs(want["loss"])) and dg <= 1e-5
    return {
        "ok": bool(ok),
        "param_device": str(params.device),
        "checkpoint_bytes": size,
        "save_s": round(save_s, 3),
        "load_s": round(load_s, 3),
        "loss": [want["loss"], got["loss"]],
        "grad_norm": [want["grad_norm"], got["grad_norm"]],
        "abs_diff": [dl, dg],
    }


def step_pipeline(device: str) -> dict:
    from scalerl.shared.models.tiny_model import default_cache_root

    cached = sorted(p.name for p in default_cache_root().glob("tiny-addition-*") if p.is_dir())
    if not cached:
        # The warm start takes minutes: not inside this budget. bench/gpu_check_prep.sh carries a built one.
        return {"ok": False, "error": f"no warm tiny model in {default_cache_root()} (run bench/gpu_check_prep.sh)"}
    steps = int(os.environ.get("PIPELINE_STEPS", "5"))
    run = os.path.join(os.environ.get("GPU_CHECK_DIR", tempfile.mkdtemp()), f"pipeline-{int(time.time())}")
    cmd = [sys.executable, "-m", "scalerl.cli", "train", "--run-dir", run, "--max-steps", str(steps),
           "--set", f"trainer.device={device}", "--set", "eval.prompts=20",
           "--set", f"eval.every={steps}"]  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    try:
        lines = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl")) if x.strip()]
    except OSError:
        lines = []
    train = [x for x in lines if x.get("kind") == "train"]
    try:
        with open(os.path.join(run, "config.toml"), "rb") as f:
            trained_cfg = tomllib.load(f).get("trainer", {})
    except (OSError, tomllib.TOMLDecodeError):
        trained_cfg = {}
    out = {
        "ok": r.returncode == 0 and len(train) >= steps,
        "exit": r.returncode,
        "train_lines": len(train),
        "seconds": round(seconds, 1),
        # The resolved config: device_for refuses "cuda" without a GPU, so a run that trained was on it.
        "trainer": {k: trained_cfg.get(k) for k in ("device", "param_dtype")},
        "device_unit": train[-1].get("device") if train else None,
        "evals": [(x["step"], round(x["pass_rate"], 3)) for x in lines if x.get("kind") == "eval"],
        "run_dir": run,
    }
    if not out["ok"]:
        out["error"] = (r.stderr.strip().splitlines() or ["(no stderr)"])[-1][-500:]
    return out


STEPS = {
    "versions": step_versions,
    "fsdp": step_fsdp,
    "head": step_head,
    "memory8b": step_memory8b,
    "publish": step_publish,
    "dcp": step_dcp,
    "pipeline": step_pipeline,
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=list(STEPS))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    a = ap.parse_args()
    t0 = time.perf_counter()
    head = {"step": a.step, "device": a.device}
    if a.device == "cuda" and not torch.cuda.is_available() and a.step != "versions":
        emit(**head, ok=False, error="--device cuda but torch sees no GPU (DEVICE=cpu runs the cpu mode)")
        return 1
    if a.device == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        out = STEPS[a.step](a.device)
    except Exception as e:
        traceback.print_exc(file=sys.stderr)  # the JSON line has the one-line error, stderr the rest
        out = {"ok": False, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"}
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
    emit(**head, **out, wall_s=round(time.perf_counter() - t0, 1))
    return 0 if out.get("ok") or "skipped" in out else 1


if __name__ == "__main__":
    sys.exit(main())
