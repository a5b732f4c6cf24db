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

from scalerl.shared.errors import ThrottledWarning
from scalerl.shared.wire import auth
from scalerl.shared.wire.addresses import bind_addresses
from scalerl.shared.wire.codec import decode, encode
from scalerl.shared.wire.messages import ProtocolError, Ready, WeightUpdate
from scalerl.shared.wire.sockets import (
    LOG_INTERVAL_S,
    MAX_READY_BYTES,
    Closing,
    check_bind_address,
    names,
    routing_id,
    show_rid,
)

log = logging.getLogger("scalerl.shared.wire.weights")


def reject_log() -> ThrottledWarning:
    """Refused messages at a weight socket, logged at most once a second with a count of those held back: a flood
    of garbage costs a line a second, not one per message (as on the control and rollout sockets)."""
    return ThrottledWarning(log, LOG_INTERVAL_S)


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
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_READY_BYTES)  # only Ready comes in: more is never held in full
    # No handover (as on the control socket): with it, any process that reached the socket could connect under a
    # receiver's routing id, without a MAC, and take over its route: the next version went to it and the generator
    # silently kept its old weights. Receivers' routing ids are unguessable (routing_id), so nobody can connect
    # first under one either.
    sock.setsockopt(zmq.ROUTER_HANDOVER, 0)
    for where in reversed(bind_addresses(address)):  # the routable one last: LAST_ENDPOINT
        sock.bind(where)
    return sock


def signed(key: bytes | None, frames: list) -> list:
    """`frames` with the run's MAC appended (shared/wire/auth.py, channel WEIGHTS); unchanged without a key."""
    return [*frames, auth.sign(key, frames, auth.WEIGHTS)] if key is not None else list(frames)


def _ready_frames(peer_id: str, version: int, key: bytes | None, rid: bytes) -> list:
    """A receiver's Ready, signed on the channel bound to its connection (auth.from_connection): replayed from another
    connection it does not verify, so it cannot divert a live receiver's next version."""
    frames = [_ready(peer_id, version)]
    return [*frames, auth.sign(key, frames, auth.from_connection(auth.WEIGHTS, rid))] if key is not None else frames


def _dealer(
    address: str, peer_id: str, version: int, context: zmq.Context | None, key: bytes | None
) -> tuple[zmq.Socket, bytes]:
    sock = (context or zmq.Context.instance()).socket(zmq.DEALER)
    sock.linger = 0
    rid = routing_id(peer_id)
    sock.setsockopt(zmq.ROUTING_ID, rid)
    sock.connect(address)
    sock.send_multipart(_ready_frames(peer_id, version, key, rid))
    return sock, rid


def _parse_ready(frames: list[bytes], key: bytes | None = None) -> Ready:
    """The Ready of [routing id, Ready, MAC]; a wrong or missing MAC is a ProtocolError (dropped and counted):
    without the run's secret a process cannot make the trainer send it the weights. A Ready whose peer_id the
    routing id does not name is refused too (as on the control socket)."""
    body = list(frames[1:])
    if key is not None:
        body, ok = auth.split(key, body, auth.from_connection(auth.WEIGHTS, frames[0]))
        if not ok:
            raise ProtocolError("unauthenticated Ready on the weight socket (wrong or missing MAC)")
    if len(body) != 1:
        raise ProtocolError(f"expected 1 frame, got {len(body)}")
    msg = decode(body[0])
    if not isinstance(msg, Ready):
        raise ProtocolError(f"unexpected {type(msg).__name__} on the weight socket")
    if not names(frames[0], msg.peer_id):
        raise ProtocolError(f"Ready.peer_id {msg.peer_id[:80]!r} != socket identity {show_rid(frames[0])}")
    return msg


class AnnouncedReceiver(Closing):
    """DEALER side shared by both transports: handshake, header decode, reject counting."""

    transport = ""

    def __init__(self, address: str, peer_id: str, version: int, context, key: bytes | None = None) -> None:
        self.peer_id = peer_id
        self.version = version
        self.key = key  # the run's HMAC key: every message both ways carries a MAC (None: none, tests and tools)
        self.n_rejected = 0
        self.last_error = ""
        self._header = b""  # the last WeightUpdate's bytes, part of what the zmq transfer's MAC covers
        self._reject_log = reject_log()
        self.socket, self._rid = _dealer(address, peer_id, version, context, key)

    def _ask(self) -> None:
        """Ask for a version newer than the one held."""
        self.socket.send_multipart(_ready_frames(self.peer_id, self.version, self.key, self._rid))

    def _next_header(self, timeout_s: float | None, announcement_only: bool = True) -> WeightUpdate | None:
        """The next WeightUpdate. announcement_only: the message is [header, MAC] and the MAC is checked here;
        else the caller reads the frames that follow (zmq buckets) and checks the MAC over all of them."""
        timeout_ms = None if timeout_s is None else max(0, math.ceil(timeout_s * 1e3))
        if not self.socket.poll(timeout_ms, zmq.POLLIN):
            return None
        try:
            header = self.socket.recv()
            if announcement_only and self.key is not None:
                mac = self.socket.recv() if self.socket.get(zmq.RCVMORE) else b""
                if not auth.verify(self.key, [header], mac, auth.WEIGHTS):
                    raise ProtocolError("unauthenticated WeightUpdate (wrong or missing MAC)")
            update = decode(header)
            if not isinstance(update, WeightUpdate) or update.transport != self.transport:
                got = getattr(update, "transport", type(update).__name__)
                raise ProtocolError(f"expected a {self.transport} WeightUpdate, got {got}")
            self._header = header
            return update
        except ProtocolError as e:
            self._reject(str(e))
            return None

    def _reject(self, reason: str) -> None:
        while self.socket.get(zmq.RCVMORE):
            self.socket.recv(copy=False)
        self.n_rejected += 1
        self.last_error = reason
        self._reject_log("weight receiver %s rejected a transfer: %s", self.peer_id, reason)
        self._after_reject()

    def _after_reject(self) -> None:
        pass

    def close(self) -> None:
        self.socket.close(linger=0)
