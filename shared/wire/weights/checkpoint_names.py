"""Trainer parameter names -> the names and tensors a Hugging Face checkpoint (and so vLLM's loader) holds.

transformers 5 keeps the experts of a Qwen2/Qwen3-MoE-style block fused, one 3-D parameter per kind:

    model.layers.L.mlp.experts.gate_up_proj   [E, 2*I, H]   (gate rows first, then up)
    model.layers.L.mlp.experts.down_proj      [E, H, I]

while checkpoints, transformers' own save_pretrained (which reverts its load-time conversion, the "qwen2_moe"
entry of transformers/conversion_mapping.py) and vLLM's Qwen3-MoE loader use one Linear per expert:

    model.layers.L.mlp.experts.e.gate_proj.weight  [I, H]
    model.layers.L.mlp.experts.e.up_proj.weight    [I, H]
    model.layers.L.mlp.experts.e.down_proj.weight  [H, I]

vLLM 0.32's loader takes only the second form (its expert mapping, FusedMoE.make_expert_params_mapping, matches
`experts.{e}.gate_proj.` and friends); a fused name reaches no parameter and the generator refuses it as unknown.
This module is the one place that translates: both weight senders (zmq.py, dist.py) pass what they publish
through `checkpoint_stream`, so the generators and the evaluator receive checkpoint names, and the tiny MoE is
saved with `checkpoint_tensors`. Every other name passes unchanged, so dense models are untouched. The splits are
views of the fused tensor: no copy beyond what the sender makes of every tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch

FUSED_GATE_UP = "mlp.experts.gate_up_proj"
FUSED_DOWN = "mlp.experts.down_proj"


def is_fused_experts(name: str) -> bool:
    return name.endswith("." + FUSED_GATE_UP) or name.endswith("." + FUSED_DOWN)


def split_experts(name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Checkpoint (name, tensor) pairs of one trainer parameter: itself, or one tensor per expert (and per gate/up
    half) for a fused experts parameter. Works on meta tensors too (shapes and dtypes only)."""
    if not is_fused_experts(name):
        return [(name, tensor)]
    if tensor.dim() != 3:
        raise ValueError(f"{name}: a fused experts tensor must be 3-D [experts, out, in], got {tuple(tensor.shape)}")
    prefix = name[: -len("gate_up_proj" if name.endswith(FUSED_GATE_UP) else "down_proj")]
    out: list[tuple[str, torch.Tensor]] = []
    if name.endswith(FUSED_GATE_UP):
        if tensor.shape[1] % 2:
            raise ValueError(f"{name}: gate_up_proj rows {tensor.shape[1]} are not gate and up halves")
        half = tensor.shape[1] // 2
        for e in range(tensor.shape[0]):
            out.append((f"{prefix}{e}.gate_proj.weight", tensor[e, :half]))
            out.append((f"{prefix}{e}.up_proj.weight", tensor[e, half:]))
    else:
        for e in range(tensor.shape[0]):
            out.append((f"{prefix}{e}.down_proj.weight", tensor[e]))
    return out


def checkpoint_meta(meta: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Shapes and dtypes (meta tensors, or any tensors) under checkpoint names, in the order the stream yields."""
    return {n: t for name, full in meta.items() for n, t in split_experts(name, full)}


def checkpoint_stream(
    meta: Mapping[str, torch.Tensor], pairs: Iterable[tuple[str, torch.Tensor]]
) -> tuple[dict[str, torch.Tensor], Iterator[tuple[str, torch.Tensor]]]:
    """A sender's (meta, tensors one at a time) under checkpoint names. The pairs are consumed lazily, one
    trainer tensor at a time, so an FSDP2 gather behind them still happens once per parameter."""
    if not any(is_fused_experts(n) for n in meta):
        return dict(meta), iter(pairs)

    def stream() -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in pairs:
            yield from split_experts(name, tensor)

    return checkpoint_meta(meta), stream()


def checkpoint_tensors(named: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict under checkpoint names, each tensor contiguous (safetensors wants that)."""
    return {n: t.contiguous() for name, full in named.items() for n, t in split_experts(name, full)}


def checkpoint_pairs(
    named: Mapping[str, object] | Iterable[tuple[str, object]],
) -> list[tuple[str, object]]:
    """(name, value) pairs under checkpoint names, for a receiver handed a trainer state dict directly (the vLLM
    backend's update_weights). Values that are not tensors pass unchanged, for the receiver's own checks to
    refuse in one line."""
    items = named.items() if isinstance(named, Mapping) else named
    out: list[tuple[str, object]] = []
    for name, value in items:
        if isinstance(value, torch.Tensor):
            out.extend(split_experts(name, value))
        else:
            out.append((name, value))
    return out
