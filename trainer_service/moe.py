"""Mixture-of-experts routing in the trainer: router replay, router agreement, expert load.

Router replay (docs/trainer.md, "Mixture-of-experts"): the generator reports the experts its router chose for
every token (Rollout.routed_experts), and the trainer's forward routes each token to exactly those experts. The
gate weights still come from the trainer's own router: softmax over its router logits, taken at the replayed
experts and renormalised over them when the model's norm_topk_prob says so, so the router keeps its gradient.
Without replay, a token whose trainer top-k differs from the generator's is scored by other experts than the
ones that sampled it, and MoE RL runs drift or collapse.

Transformers' Qwen3-MoE computes its routing in a router module (`mlp.gate`, a Qwen3MoeTopKRouter in 5.x) that
returns (router_logits, gate_weights, expert_indices); the experts module then only reads the weights and the
indices. `RouterHooks` replaces that module's output through a forward hook, so the model code stays as it is,
under FSDP2 and activation checkpointing alike (the hook stays on through the backward's recomputation).

Pure functions of tensors otherwise; the step (step.py) builds the per-micro-batch replay tensor and sums the
statistics over micro-batches and ranks.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

NO_EXPERT = -1  # a routed-experts entry with no replay data (padding, or a token the generator never routed)
# Per-micro-batch statistics, summed over micro-batches and ranks: token-layer choices with replay data, those
# whose experts used in the forward equal the generator's, and those whose trainer top-k set equals it.
MOE_SUMS = ("router_choices", "router_used_agree", "router_own_agree")


def moe_routers(model: nn.Module) -> list[nn.Module]:
    """The top-k router modules of the MoE layers, in layer order (empty for a dense model).

    A router is a module with `top_k`, `num_experts` and a (num_experts, hidden) `weight` whose forward returns
    (router_logits, gate_weights, expert_indices), as transformers' *TopKRouter modules do."""
    return [
        m
        for m in model.modules()
        if type(m).__name__.endswith("TopKRouter") and hasattr(m, "top_k") and hasattr(m, "num_experts")
    ]


def is_moe(model: nn.Module) -> bool:
    return bool(moe_routers(model))


def moe_shape(model: nn.Module) -> tuple[int, int, int]:
    """(MoE layers, experts per layer, top-k); raises ValueError (one line) for a dense model."""
    routers = moe_routers(model)
    if not routers:
        raise ValueError(f"{type(model).__name__} is not a mixture-of-experts model (no top-k router modules)")
    return len(routers), _int_attr(routers[0], "num_experts"), _int_attr(routers[0], "top_k")


def _int_attr(module: nn.Module, name: str) -> int:
    value = getattr(module, name)
    if not isinstance(value, int):
        raise ValueError(f"{type(module).__name__}.{name} is {value!r}, not an int")
    return value


def replay_gate(
    router_logits: torch.Tensor, replay: torch.Tensor | None, top_k: int, norm_topk_prob: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gate weights (N, k) in the logits' dtype, expert indices (N, k), the router's own top-k (N, k)).

    router_logits (N, E); replay (N, k) long: the experts to use, or a row of NO_EXPERT to keep the router's own
    choice. The weights are softmax(router_logits) at the chosen experts, renormalised over them when
    norm_topk_prob, i.e. what the router computes for its own top-k, at other indices."""
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float)
    own = torch.topk(probs, top_k, dim=-1).indices
    if replay is None:
        idx = own
    else:
        has = (replay >= 0).all(-1, keepdim=True)
        idx = torch.where(has, replay.clamp_min(0), own)
    weights = probs.gather(-1, idx)
    if norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(router_logits.dtype), idx, own


def same_sets(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(...,) bool: whether the last-dimension index sets of a and b are equal (order does not matter)."""
    return (a.sort(-1).values == b.sort(-1).values).all(-1)


@dataclass
class RouterTrace:
    """What the routers did in one forward, per MoE layer in order: router logits (N, E) with their gradient,
    the experts used (N, k) and the router's own top-k (N, k)."""

    logits: list[torch.Tensor] = field(default_factory=list)
    used: list[torch.Tensor] = field(default_factory=list)
    own: list[torch.Tensor] = field(default_factory=list)


class RouterHooks:
    """Replay and recording hooks on a model's routers. `with hooks.active(replay) as trace:` around the forward
    AND the backward of a micro-batch: activation checkpointing recomputes the layers in the backward, and that
    recomputation must route as the forward did. Only the first call of each router (the forward) is recorded."""

    def __init__(self, model: nn.Module) -> None:
        self.routers = moe_routers(model)
        self.n_layers = len(self.routers)

    @contextmanager
    def active(self, replay: torch.Tensor | None = None) -> Iterator[RouterTrace]:
        """replay: (N, layers, k) long in the model layout (N = rows x columns of the input), NO_EXPERT where
        the router keeps its own choice; None records only."""
        if replay is not None and (replay.dim() != 3 or replay.shape[1] != self.n_layers):
            raise ValueError(f"replay has shape {tuple(replay.shape)}, expected (tokens, {self.n_layers}, k)")
        trace = RouterTrace()
        seen = [False] * self.n_layers
        handles = [r.register_forward_hook(self._hook(i, replay, trace, seen)) for i, r in enumerate(self.routers)]
        try:
            yield trace
        finally:
            for h in handles:
                h.remove()

    @staticmethod
    def _hook(layer: int, replay: torch.Tensor | None, trace: RouterTrace, seen: list[bool]):
        def hook(module: nn.Module, args, output):
            logits, top_k, mine = output[0], _int_attr(module, "top_k"), None
            if replay is not None:
                mine = replay[:, layer, :]
                if mine.shape[0] != logits.shape[0] or mine.shape[1] != top_k:
                    raise ValueError(
                        f"router replay: layer {layer} got {tuple(mine.shape)} experts for "
                        f"{logits.shape[0]} tokens x top-{top_k}"
                    )
            weights, idx, own = replay_gate(logits, mine, top_k, bool(getattr(module, "norm_topk_prob", True)))
            if not seen[layer]:
                seen[layer] = True
                trace.logits.append(logits)
                trace.used.append(idx.detach())
                trace.own.append(own.detach())
            if replay is None:
                return output  # record only: the router's own output, untouched
            return (logits, weights, idx)

        return hook


def to_model_layout(
    routed: torch.Tensor, rows: torch.Tensor, index: torch.Tensor, valid: torch.Tensor, n_model: int
) -> torch.Tensor:
    """A micro-batch's replay tensor (n_model, layers, k) long from the step batch's routed (B, L, layers, k).

    rows (n,) are the micro-batch's rows of the step batch; index (n, width) the flat model position of each of
    their tokens (microbatch.MicroBatch.index); valid (n, width) bool the real tokens (the others may share a
    position)."""
    width = index.shape[1]
    out = torch.full((n_model, *routed.shape[2:]), NO_EXPERT, dtype=torch.long, device=routed.device)
    src = routed[rows, :width].long()
    out[index[valid]] = src[valid]
    return out


def trace_sums(
    trace: RouterTrace, gen: torch.Tensor | None, real: torch.Tensor | None, n_experts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(MOE_SUMS as a float64 vector, expert load (layers, n_experts) float64) of one forward.

    gen (N, layers, k): the generator's experts (NO_EXPERT where none), None = no agreement to count; real (N,)
    bool: the real tokens (None = all). The load counts every real token's used experts, the agreement every real
    token-layer with the generator's routing, whether or not it was replayed."""
    dev = trace.used[0].device if trace.used else torch.device("cpu")
    load = torch.zeros(len(trace.used), n_experts, dtype=torch.float64, device=dev)
    sums = torch.zeros(len(MOE_SUMS), dtype=torch.float64, device=dev)
    for layer, (used, own) in enumerate(zip(trace.used, trace.own)):
        keep = real if real is not None else torch.ones(used.shape[0], dtype=torch.bool, device=dev)
        counts = torch.zeros(n_experts, dtype=torch.float64, device=dev)
        load[layer] = counts.index_add(0, used.reshape(-1), keep.repeat_interleave(used.shape[1]).to(counts))
        if gen is None:
            continue
        theirs = gen[:, layer, :]
        has = keep & (theirs >= 0).all(-1)
        sums += torch.stack(
            [has.sum(), (has & same_sets(used, theirs)).sum(), (has & same_sets(own, theirs)).sum()]
        ).to(sums)
    return sums, load


def load_entropy(load: torch.Tensor) -> float:
    """Mean over layers of the entropy of each layer's expert-load distribution, divided by ln(n_experts):
    1.0 when every expert got the same share of the tokens, 0.0 when one expert got them all. NaN if no load."""
    total = load.sum(-1, keepdim=True)
    if load.numel() == 0 or not bool((total > 0).all()) or load.shape[-1] < 2:
        return float("nan")
    p = load / total
    ent = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)
    return float(ent.mean() / math.log(load.shape[-1]))


def moe_stats(sums: torch.Tensor, load: torch.Tensor) -> dict[str, float]:
    """The train line's MoE entries from the step's summed statistics: router_agreement (the share of
    token-layer choices whose experts in the trainer's forward equal the generator's; 1.0 under replay),
    router_own_agreement (the share where the trainer's router, left alone, picks the generator's set: the
    agreement replay restores), expert_load_entropy (load_entropy). An entry that is undefined is left out (no
    NaN in metrics.jsonl): the agreements when no rollout carried routed experts."""
    choices, used, own = (float(x) for x in sums.tolist())
    line = {"router_agreement": used / choices, "router_own_agreement": own / choices} if choices else {}
    entropy = load_entropy(load)
    if not math.isnan(entropy):
        line["expert_load_entropy"] = entropy
    return line
