"""The weight transports by name: the one place their names are spelled, and what each one needs.

Config validation, the trainer's publisher, the generator, the evaluator and the vLLM backend all ask this
registry instead of comparing strings. Adding a transport means one module with its sender and receiver and one
entry in TRANSPORTS. No torch here: the CLI validates `generator.weights_transport` before any process starts.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args


@dataclass(frozen=True)
class WeightTransport:
    """One way for policy weights to go from the trainer (rank 0) to the generators.

    broadcast: the buckets go over a process group (trainer = rank 0) after a zmq announcement, so the run needs
        a rendezvous (dist_init_method), ranks and a world size, and a generator cannot rejoin after a restart.
    vllm_engine: the vLLM weight-transfer engine that receives ("nccl", "gloo"); None when scalerl receives.
        vLLM's engines cut their own chunks, so those transfers use vLLM's packed bucket layout.
    group_backend: the process group's backend; None: the generator's `dist_backend` key decides (dist).
    sender / receiver: "module:class" of the two ends, imported only when opened (they import torch).
    """

    name: str
    broadcast: bool
    vllm_engine: Literal["nccl", "gloo"] | None
    group_backend: str | None
    sender: str
    receiver: str
    summary: str

    @property
    def packed(self) -> bool:
        return self.vllm_engine is not None

    @property
    def generator_joins_group(self) -> bool:
        """The generator process itself takes a rank (else vLLM's workers join from inside the engine)."""
        return self.broadcast and self.vllm_engine is None

    def backend(self, dist_backend: str = "gloo") -> str:
        """The weight group's backend, given the generator's dist_backend key."""
        return self.group_backend or dist_backend

    def sends_from_cuda(self, dist_backend: str = "gloo") -> bool:
        """NCCL broadcasts device tensors only: the trainer fills its buckets on the GPU."""
        return self.broadcast and self.backend(dist_backend) == "nccl"

    def sender_class(self) -> Any:
        return _load(self.sender)

    def receiver_class(self) -> Any:
        return _load(self.receiver)


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


# The names, spelled once; code elsewhere uses these constants or asks a WeightTransport what it needs.
# Final keeps each one's literal type, so they fit a WeightTransportName field.
ZMQ: Final = "zmq"
DIST: Final = "dist"
VLLM_NCCL: Final = "vllm-nccl"
VLLM_GLOO: Final = "vllm-gloo"
# The same names as a type, for config fields and messages (checked against TRANSPORTS at import).
WeightTransportName = Literal["zmq", "dist", "vllm-nccl", "vllm-gloo"]
_W = "scalerl.shared.wire.weights"
TRANSPORTS: dict[str, WeightTransport] = {
    t.name: t
    for t in (
        WeightTransport(
            ZMQ, False, None, None, f"{_W}.zmq:ZmqWeightSender", f"{_W}.zmq:ZmqWeightReceiver",
            "buckets as frames of one zmq message; late joiners and restarts welcome",
        ),
        WeightTransport(
            DIST, True, None, None, f"{_W}.dist:DistWeightSender", f"{_W}.dist:DistWeightReceiver",
            "announced over zmq, broadcast over a torch.distributed group (gloo or nccl)",
        ),
        WeightTransport(
            VLLM_NCCL, True, "nccl", "nccl", f"{_W}.dist:DistWeightSender", f"{_W}.dist:AnnouncementReceiver",
            "broadcast over NCCL into vLLM's workers (its nccl weight-transfer engine)",
        ),
        WeightTransport(
            VLLM_GLOO, True, "gloo", "gloo", f"{_W}.dist:DistWeightSender", f"{_W}.dist:AnnouncementReceiver",
            "vLLM's nccl engine with gloo in its place: the CPU twin of vllm-nccl",
        ),
    )
}  # fmt: skip
WEIGHT_TRANSPORT_NAMES = tuple(TRANSPORTS)
if get_args(WeightTransportName) != WEIGHT_TRANSPORT_NAMES:  # a new transport must be added to both
    raise ImportError(f"WeightTransportName {get_args(WeightTransportName)} != TRANSPORTS {WEIGHT_TRANSPORT_NAMES}")
DEFAULT_WEIGHT_TRANSPORT: WeightTransportName = ZMQ


class UnknownTransport(ValueError):
    """A transport name not in TRANSPORTS; the message names the known ones."""


def weight_transport(name: str) -> WeightTransport:
    try:
        return TRANSPORTS[name]
    except KeyError:
        known = ", ".join(repr(t) for t in TRANSPORTS)
        raise UnknownTransport(f"weights_transport must be one of {known}, not {name!r}") from None
