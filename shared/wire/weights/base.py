"""What every weight transport shares: the sender and receiver interfaces, and the zmq announcement channel.

Every transport announces a version with a WeightUpdate on a zmq ROUTER (sender) / DEALER (receiver) pair; a
receiver's Ready(version=v) asks for a version newer than v. What follows the announcement is the transport's
own: zmq frames (zmq.py) or broadcasts over a process group (dist.py).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Iterable, Mapping, Protocol

import torch
import zmq

from scalerl.shared.wire.codec import decode, encode
from scalerl.shared.wire.messages import ProtocolError, Ready, WeightUpdate
from scalerl.shared.wire.sockets import Closing, check_bind_address

log = logging.getLogger("scalerl.shared.wire.weights")


class WeightSender(Protocol):
    """The trainer's end (rank 0 only)."""

    def publish_stream(self, meta: Any, pairs: Iterable[tuple[str, torch.Tensor]], version: int, **kw: Any) -> Any:
        """Send `version`, taking the tensors one at a time (so that one bucket is held at once)."""

    def publish(self, named_tensors: Mapping[str, torch.Tensor], version: int) -> WeightUpdate:
        """Send `version` from a dict of tensors."""

    def wait_for_receivers(self, n: int, timeout_s: float) -> None:
        """Block until n receivers have said Ready, or raise TimeoutError."""

    def close(self) -> None: ...


class WeightReceiver(Protocol):
    """A generator's (or the evaluator's) end: poll between engine steps."""

    version: int
    socket: zmq.Socket
    n_rejected: int

    def receive(self, timeout_s: float | None = 0.0) -> tuple[int, Any] | None:
        """(version, tensors or the announcement) if a newer version arrived within timeout_s, else None."""

    def close(self) -> None: ...


def _ready(peer_id: str, version: int) -> bytes:
    return encode(Ready(peer_id=peer_id, role="weight_receiver", version=version, pid=os.getpid()))


def _router(address: str, allow_remote: bool, context: zmq.Context | None) -> zmq.Socket:
    check_bind_address(address, allow_remote)
    sock = (context or zmq.Context.instance()).socket(zmq.ROUTER)
    sock.linger = 0
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.bind(address)
    return sock


def _dealer(address: str, peer_id: str, version: int, context: zmq.Context | None) -> zmq.Socket:
    sock = (context or zmq.Context.instance()).socket(zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.ROUTING_ID, peer_id.encode())
    sock.connect(address)
    sock.send(_ready(peer_id, version))
    return sock


def _parse_ready(frames: list[bytes]) -> Ready:
    if len(frames) != 2:
        raise ProtocolError(f"expected 1 frame, got {len(frames) - 1}")
    msg = decode(frames[1])
    if not isinstance(msg, Ready):
        raise ProtocolError(f"unexpected {type(msg).__name__} on the weight socket")
    return msg


class AnnouncedReceiver(Closing):
    """DEALER side shared by both transports: handshake, header decode, reject counting."""

    transport = ""

    def __init__(self, address: str, peer_id: str, version: int, context) -> None:
        self.peer_id = peer_id
        self.version = version
        self.n_rejected = 0
        self.last_error = ""
        self.socket = _dealer(address, peer_id, version, context)

    def _next_header(self, timeout_s: float | None) -> WeightUpdate | None:
        timeout_ms = None if timeout_s is None else max(0, math.ceil(timeout_s * 1e3))
        if not self.socket.poll(timeout_ms, zmq.POLLIN):
            return None
        try:
            update = decode(self.socket.recv())
            if not isinstance(update, WeightUpdate) or update.transport != self.transport:
                got = getattr(update, "transport", type(update).__name__)
                raise ProtocolError(f"expected a {self.transport} WeightUpdate, got {got}")
            return update
        except ProtocolError as e:
            self._reject(str(e))
            return None

    def _reject(self, reason: str) -> None:
        while self.socket.get(zmq.RCVMORE):
            self.socket.recv(copy=False)
        self.n_rejected += 1
        self.last_error = reason
        log.warning("weight receiver %s rejected a transfer: %s", self.peer_id, reason)
        self._after_reject()

    def _after_reject(self) -> None:
        pass

    def close(self) -> None:
        self.socket.close(linger=0)
