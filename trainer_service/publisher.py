"""The trainer's end of the weight transports: after each step, the policy goes to the generators.

`publish(model, version)` is a collective: every trainer rank calls it (rank 0 sends CMD_PUBLISH first), because
under FSDP2 each tensor is gathered with `DTensor.full_tensor()`, which every rank must join. Tensors are cast to the
generator's dtype before the gather (half the gather traffic for bf16), gathered one at a time in state_dict order,
and stay on the trainer's device; only rank 0 keeps them, copying each into the transport's current bucket, which
leaves as soon as it is full. So at most one gathered tensor and one bucket exist beyond the shards.

Transports (`wiring.weights_transport`, set by `scalerl train` from `[generator] weights_transport`):

  zmq        ZmqWeightSender: CPU buckets, served to each generator from a background thread; never waits.
  dist       DistWeightSender over a torch.distributed group: gloo from CPU buckets, or NCCL from the GPU.
  vllm-nccl  vLLM's own NCCL engine receives in the vLLM workers; the trainer joins vLLM's rendezvous
             (nccl_common.trainer_init) and broadcasts the buckets packed as vLLM unpacks them.
  vllm-gloo  the same protocol over a gloo group (the generator registers the `scalerl_gloo` engine): CPU runs and
             the tests of everything in vllm-nccl but the NCCL calls.

The broadcast transports need every receiver in the group before the first collective, and the generators join it
while they start (before they say Ready), so the trainer opens its side on a background thread at once and the
first publish waits for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol
from urllib.parse import urlparse

import torch
from torch import nn

from scalerl.shared.wire.dtypes import TORCH_DTYPES
from scalerl.shared.wire.weights.dist import DistWeightSender, open_weight_group
from scalerl.shared.wire.weights.layout import BUCKET_BYTES, PACKED_BUFFER_BYTES
from scalerl.shared.wire.weights.registry import weight_transport
from scalerl.shared.wire.weights.zmq import ZmqWeightSender
from scalerl.shared.wiring import RunWiring

from .config import TrainerConfig

log = logging.getLogger("scalerl.trainer")

LM_HEAD = "lm_head.weight"
ZMQ_IO_THREADS_MAX = 16  # the zmq weight sender's socket writers: one per generator, up to this many


class RankInfo(Protocol):
    """What the publisher needs of the trainer's process layout (parallel.Dist has both)."""

    rank: int
    device: torch.device


def weight_stream(
    model: nn.Module, dtype: torch.dtype, *, fp32_lm_head: bool = False, skip: frozenset[str] = frozenset()
) -> tuple[dict[str, torch.Tensor], Iterator[tuple[str, torch.Tensor]]]:
    """(shapes and dtypes on the meta device, the tensors one at a time). The metadata costs nothing (a DTensor
    knows its global shape); iterating gathers, so every rank must iterate it to the end, in step. fp32_lm_head
    keeps the head in FP32 (the publisher does not: Publisher.stream)."""
    state = model.state_dict()
    names = [k for k in state if k not in skip]

    def target(name: str, t: torch.Tensor) -> torch.dtype:
        if not t.is_floating_point():
            return t.dtype
        return torch.float32 if fp32_lm_head and name == LM_HEAD else dtype

    meta = {k: torch.empty(state[k].shape, dtype=target(k, state[k]), device="meta") for k in names}

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for k in names:
            t = state[k].detach().to(meta[k].dtype)
            full = getattr(t, "full_tensor", None)  # a DTensor shard: all-gather it (a collective)
            yield k, full() if callable(full) else t

    return meta, tensors()


class Publisher:
    """See the module docstring. One per trainer rank; only rank 0 holds a sender."""

    def __init__(
        self,
        wiring: RunWiring,
        rank: int,
        sender: ZmqWeightSender | DistWeightSender | None,
        timeout_s: float = 120.0,
    ) -> None:
        self.wiring = wiring
        self.rank = rank
        self.sender = sender
        self.timeout_s = timeout_s  # a broadcast's deadline: the trainer's peer_timeout_s
        self.dtype = TORCH_DTYPES[wiring.weights_dtype]
        self._opener: threading.Thread | None = None
        self._group: dict[str, Any] = {}  # filled by the opener thread: "group" or "error"
        self.last_publish_s = 0.0

    def stream(self, model: nn.Module) -> tuple[dict[str, torch.Tensor], Iterator[tuple[str, torch.Tensor]]]:
        """The version as the generators take it (weight_stream's pair): every rank must iterate it to the end, as
        publish() does; the evaluation channel sends the same stream (evaluation.py).

        The LM head travels in the generators' dtype even with `fp32_lm_head`: no receiver keeps an FP32 head.
        vLLM holds it in the model's dtype and accumulates the logits in FP32 (`head_dtype`); the torch engine
        copies it into its model-dtype parameter and makes its FP32 copy from that (decoder.refresh_lm_head).
        Rounding here or there gives the same bits; sending FP32 cost 2x the head (~1.2 GB per 8B update)."""
        # vLLM skips a tied lm_head (the embedding carries it): do not spend a vocab x hidden tensor on nothing.
        tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
        skip = frozenset({LM_HEAD}) if tied and weight_transport(self.wiring.weights_transport).packed else frozenset()
        return weight_stream(model, self.dtype, skip=skip)

    def publish(self, model: nn.Module, version: int) -> float:
        """Every rank calls this with the same model; rank 0 sends `version`. Returns rank 0's seconds from the
        first gather to the last byte handed over (for broadcasts: every receiver has it)."""
        t0 = time.perf_counter()
        meta, pairs = self.stream(model)
        if self.sender is None:
            for _ in pairs:  # a follower: only join the gathers
                pass
            return 0.0
        try:
            if isinstance(self.sender, DistWeightSender):
                if self.sender.group is None:
                    self.sender.group = self._wait_for_group()
                self.sender.publish_stream(meta, pairs, version, timeout_s=self.timeout_s)
            else:
                self.sender.publish_stream(meta, pairs, version)
        except Exception:
            # The other ranks are still in the gathers: finish them, so the failure ends the run instead of a hang.
            for _ in pairs:
                pass
            raise
        self.last_publish_s = time.perf_counter() - t0
        return self.last_publish_s

    def _wait_for_group(self) -> Any:
        assert self._opener is not None
        self._opener.join()
        if "error" in self._group:
            raise RuntimeError(f"opening the weight group ({self.wiring.weights_transport}): {self._group['error']}")
        return self._group["group"]

    def open_group_in_background(self, device: torch.device) -> None:
        def run() -> None:
            try:
                self._group["group"] = open_group(self.wiring, device)
            except Exception as e:  # surfaced by the first publish, on the trainer's thread
                self._group["error"] = f"{type(e).__name__}: {e}"

        # A daemon: a rendezvous that never completes must not keep the process from exiting.
        self._opener = threading.Thread(target=run, name="weight-group-open", daemon=True)
        self._opener.start()

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()


def open_group(wiring: RunWiring, device: torch.device) -> Any:
    """The trainer's side (rank 0) of the weight group's rendezvous; blocks until every receiver has joined."""
    url = urlparse(wiring.weights_dist_init_method)
    world = wiring.weights_dist_world_size
    transport = weight_transport(wiring.weights_transport)
    if transport.vllm_engine == "nccl":
        # vLLM's own rendezvous (StatelessProcessGroup + PyNcclCommunicator): its workers join it from
        # init_weight_transfer_engine, and a torch ProcessGroupNCCL could not meet them there.
        from vllm.distributed.weight_transfer.nccl_common import trainer_init

        torch.cuda.set_device(device)  # the current device is per thread, and this runs on the opener thread
        return trainer_init({"master_address": url.hostname, "master_port": url.port, "world_size": world})
    backend = transport.backend(wiring.weights_dist_backend)
    if backend == "nccl":
        torch.cuda.set_device(device)
    return open_weight_group(wiring.weights_dist_init_method, 0, world, backend=backend)


def build_publisher(
    cfg: TrainerConfig, wiring: RunWiring, dist_state: RankInfo | None = None, key: bytes | None = None
) -> Publisher:
    """The publisher for this rank: rank 0 binds the weights socket and starts opening the weight group. `key`: the
    run's HMAC key, which signs every message of the weight channel (shared/wire/auth.py)."""
    rank = dist_state.rank if dist_state is not None else 0
    if dist_state is not None:
        device = dist_state.device
    elif cfg.device != "cpu" and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    timeout_s = cfg.peer_timeout_s
    if rank != 0:
        return Publisher(wiring, rank, None, timeout_s)
    transport = weight_transport(wiring.weights_transport)
    if not transport.broadcast:
        sender_class = transport.sender_class()
        # A GPU trainer copies each gathered tensor into pinned CPU buckets (never run on a GPU yet); one zmq I/O
        # thread per generator writes its copy.
        sender = sender_class(
            wiring.weights_addr,
            allow_remote=wiring.allow_remote,
            key=key,
            pin_memory=device.type == "cuda",
            io_threads=max(1, min(wiring.n_generators, ZMQ_IO_THREADS_MAX)),
        )
        return Publisher(wiring, 0, sender, timeout_s)
    if transport.sends_from_cuda(wiring.weights_dist_backend):
        if device.type != "cuda":
            raise ValueError(f"weights_transport {transport.name!r} over NCCL needs the trainer on CUDA, not {device}")
        send_device = device
    else:
        send_device = torch.device("cpu")
    if transport.vllm_engine == "nccl":  # the trainer's end of vLLM's NCCL rendezvous is vLLM's own code
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise ValueError(f"weights_transport {transport.name!r} needs vLLM installed beside the trainer")
    sender = transport.sender_class()(
        wiring.weights_addr,
        None,
        n_receivers=wiring.n_generators,
        group_address=wiring.weights_dist_init_method,
        device=send_device,
        bucket_bytes=PACKED_BUFFER_BYTES if transport.packed else BUCKET_BYTES,
        allow_remote=wiring.allow_remote,
        transport=transport.name,
        key=key,
    )
    publisher = Publisher(wiring, 0, sender, timeout_s)
    publisher.open_group_in_background(send_device)
    return publisher
