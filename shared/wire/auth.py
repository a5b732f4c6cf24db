"""Message authentication for the wire: an HMAC-SHA256 over a message's frames with the run's secret.

A sender appends `sign(key, frames, channel)` as one extra zmq frame; a receiver takes it off and checks it with
`verify` before decoding anything, so the messages themselves (codec.py) stay as they are. The channel name is
part of what is signed: a rollout cannot be replayed as a control message, or a control message as weights. What a
peer sends to a ROUTER (control messages, weight Readys) is signed on the channel bound to its routing id
(`from_connection`), so it cannot be replayed from another connection either.

The key is the run's secret (RUN/.secret, mode 0600, owned by the run's user): `key_from_secret` turns the text
`read_secret` returns into bytes. Frames are length-prefixed before hashing, so moving bytes from one frame to the
next changes the MAC.

The weight channel (shared/wire/weights/) uses the same two calls with channel=WEIGHTS:
    sender:   frames.append(sign(key, frames, WEIGHTS))
    receiver: body, ok = split(key, frames, WEIGHTS)   # ok False: drop and count, never raise
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

__all__ = [
    "MAC_BYTES",
    "ROLLOUT",
    "CONTROL",
    "REQUEST",
    "WEIGHTS",
    "from_connection",
    "key_from_secret",
    "sign",
    "verify",
    "split",
]

MAC_BYTES = 32
ROLLOUT, CONTROL, REQUEST, WEIGHTS = b"rollout", b"control", b"request", b"weights"


def from_connection(channel: bytes, routing_id: bytes) -> bytes:
    """The channel name for what a DEALER sends to a ROUTER: the channel bound to the sender's routing id, which the
    ROUTER reads off the connection. A signed message captured on one connection then fails to verify when sent from
    any other: a replayed Ready cannot take over a live peer's route (a new connection's Ready replaces the old)."""
    return channel + b"@" + routing_id


def key_from_secret(secret: str | bytes) -> bytes:
    """The HMAC key for a run secret as read from RUN/.secret (surrounding whitespace ignored)."""
    raw = secret.encode() if isinstance(secret, str) else secret
    raw = raw.strip()
    if not raw:
        raise ValueError("empty run secret: nothing to authenticate with")
    return raw


def sign(key: bytes, frames: Sequence[bytes], channel: bytes = b"") -> bytes:
    """The MAC frame for `frames` on `channel`."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    mac.update(len(channel).to_bytes(4, "big") + channel)
    for frame in frames:
        mac.update(len(frame).to_bytes(8, "big"))
        mac.update(frame)
    return mac.digest()


def verify(key: bytes, frames: Sequence[bytes], mac: bytes, channel: bytes = b"") -> bool:
    """True when `mac` is `sign(key, frames, channel)`; constant time."""
    return len(mac) == MAC_BYTES and hmac.compare_digest(sign(key, frames, channel), mac)


def split(key: bytes, frames: Sequence[bytes], channel: bytes = b"") -> tuple[list[bytes], bool]:
    """(frames without their trailing MAC, whether it verified). A message without a MAC frame does not verify."""
    if len(frames) < 2:
        return list(frames), False
    body = list(frames[:-1])
    return body, verify(key, body, bytes(frames[-1]), channel)
