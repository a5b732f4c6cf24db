"""Weight buckets: how named tensors are laid out in byte buckets and described by a WeightUpdate's manifest.

Two layouts: aligned buckets (`plan_buckets`, every scalerl receiver) and vLLM's packed layout (`packed_layout`,
for vLLM's weight-transfer engines, which cut their own chunks). Tensors travel as raw little-endian bytes.
"""

from __future__ import annotations

import math
import sys
from typing import Callable, Iterable, Mapping

import torch

from scalerl.shared.wire.dtypes import DTYPE_NAMES, TORCH_DTYPES
from scalerl.shared.wire.messages import TensorSpec, WeightUpdate
from scalerl.shared.wire.weights.registry import weight_transport

BUCKET_BYTES = 64 << 20
# vLLM's packed transfer: the worker cuts chunks from this size (sent in its init info), the trainer must agree.
PACKED_BUFFER_BYTES = 256 << 20
PACKED_NUM_BUFFERS = 2
ALIGN = 64  # byte alignment of each tensor inside a bucket

if sys.byteorder != "little":  # raw tensor bytes are little-endian on the wire
    raise ImportError("scalerl weight sync needs a little-endian host")


def plan_buckets(
    named: Mapping[str, torch.Tensor], bucket_bytes: int = BUCKET_BYTES
) -> tuple[list[int], list[TensorSpec]]:
    """Lay tensors out in order into buckets: (bucket sizes, manifest)."""
    sizes: list[int] = []
    specs: list[TensorSpec] = []
    for name, t in named.items():
        if t.dtype not in DTYPE_NAMES:
            raise ValueError(f"{name}: dtype {t.dtype} cannot be sent")
        nbytes = t.numel() * t.element_size()
        start = math.ceil(sizes[-1] / ALIGN) * ALIGN if sizes else 0
        if not sizes or (start + nbytes > bucket_bytes and sizes[-1] > 0):
            sizes.append(0)
            start = 0
        specs.append(
            TensorSpec(
                name=name,
                dtype=DTYPE_NAMES[t.dtype],
                shape=tuple(t.shape),
                bucket=len(sizes) - 1,
                offset=start,
                nbytes=nbytes,
            )
        )
        sizes[-1] = start + nbytes
    return sizes, specs


def packed_layout(
    named: Mapping[str, torch.Tensor], buffer_bytes: int = PACKED_BUFFER_BYTES
) -> tuple[list[int], list[TensorSpec]]:
    """vLLM's packed layout: tensors back to back, a chunk closed by the first tensor that takes it past
    buffer_bytes (that tensor stays in it). packed_tensor.pack_tensors (trainer) and
    packed_nccl_broadcast_consumer (worker) cut the same way; a different cut would load garbage or hang."""
    sizes: list[int] = []
    specs: list[TensorSpec] = []
    closed = True
    for name, t in named.items():
        if t.dtype not in DTYPE_NAMES:
            raise ValueError(f"{name}: dtype {t.dtype} cannot be sent")
        nbytes = t.numel() * t.element_size()
        if closed:
            sizes.append(0)
            closed = False
        specs.append(
            TensorSpec(
                name=name,
                dtype=DTYPE_NAMES[t.dtype],
                shape=tuple(t.shape),
                bucket=len(sizes) - 1,
                offset=sizes[-1],
                nbytes=nbytes,
            )
        )
        sizes[-1] += nbytes
        closed = sizes[-1] > buffer_bytes
    return sizes, specs


def fill_buckets(
    sizes: list[int],
    specs: list[TensorSpec],
    pairs: Iterable[tuple[str, torch.Tensor]],
    device: str | torch.device,
    on_bucket: Callable[[torch.Tensor], None],
    *,
    pin_memory: bool = False,
) -> None:
    """Copy a stream of (name, tensor), in manifest order, into buckets; hand each bucket to on_bucket as soon
    as it is full. Only one bucket exists at a time, and each tensor can be freed once copied. pin_memory:
    page-locked CPU buckets, for tensors that come from a GPU (CUDA only)."""
    it = iter(pairs)
    bucket: torch.Tensor | None = None
    current = -1
    for spec in specs:
        name, t = next(it, ("", None))
        if t is None or name != spec.name:
            raise ValueError(f"weight stream gave {name or 'nothing'!r} where the manifest has {spec.name!r}")
        if DTYPE_NAMES.get(t.dtype) != spec.dtype or tuple(t.shape) != spec.shape:
            raise ValueError(f"{name}: {t.dtype} {tuple(t.shape)}, the manifest says {spec.dtype} {spec.shape}")
        if bucket is None or spec.bucket != current:
            if bucket is not None:
                on_bucket(bucket)
            current = spec.bucket
            bucket = torch.zeros(sizes[current], dtype=torch.uint8, device=device, pin_memory=pin_memory)
        bucket[spec.offset : spec.offset + spec.nbytes].copy_(t.detach().reshape(-1).view(torch.uint8))
    if bucket is not None:
        on_bucket(bucket)
    extra = next(it, None)
    if extra is not None:
        raise ValueError(f"weight stream gave {extra[0]!r}, which the manifest does not have")


def pack(
    named: Mapping[str, torch.Tensor], sizes: list[int], specs: list[TensorSpec], device: str | torch.device = "cpu"
) -> list[torch.Tensor]:
    """Copy tensors into new uint8 buckets (a snapshot: later in-place updates don't leak)."""
    buckets = [torch.zeros(n, dtype=torch.uint8, device=device) for n in sizes]
    for spec in specs:
        t = named[spec.name].detach().reshape(-1).view(torch.uint8)
        buckets[spec.bucket][spec.offset : spec.offset + spec.nbytes].copy_(t)
    return buckets


def unpack(buckets: list[torch.Tensor], manifest: tuple[TensorSpec, ...]) -> dict[str, torch.Tensor]:
    """Tensors as views into the buckets, per the (already validated) manifest."""
    out = {}
    for s in manifest:
        raw = buckets[s.bucket][s.offset : s.offset + s.nbytes]
        out[s.name] = raw.view(TORCH_DTYPES[s.dtype]).reshape(s.shape)
    return out


def make_update(named, version, transport, address, bucket_bytes):
    layout = packed_layout if weight_transport(transport).packed else plan_buckets
    sizes, specs = layout(named, bucket_bytes)
    update = WeightUpdate(
        version=version, transport=transport, address=address, bucket_sizes=tuple(sizes), manifest=tuple(specs)
    )
    return update, sizes, specs
