"""ZeroMQ endpoints that carry protocol messages (codec.py) between processes.

Data plane, PUSH/PULL: the trainer binds a PushEndpoint for GenerationRequests and a
PullEndpoint for Rollouts; generators connect the opposite ends. Control plane,
ROUTER/DEALER: ControlServer (trainer) and ControlClient (one per generator). A
client's first message is Ready, which is how the server learns it exists: the
server never sends to a peer it has not heard from, and a DEALER queues what it
sends until connected, so nothing sent at startup is lost (unlike PUB/SUB).
Both control ends send Heartbeats while their recv() is being called (or heartbeat_if_due(), from a loop
busy elsewhere) and track the other side in a PeerMonitor.

Routing ids: a peer's zmq routing id is `routing_id(peer_id)`, its peer id and a random suffix, new for every
socket. The server keeps peer id -> routing id from each signed Ready and sends by peer id. With a fixed routing id
(the peer id itself) any local process could connect first under it, without the secret: the ROUTER (no handover)
then refused the real peer's connection and the run lost that peer.

Receiving endpoints never raise on bad input: a malformed message, wrong protocol
version or unexpected type is counted in `n_rejected`, logged (one line, at most
once a second) and skipped.

Authentication (auth.py): an endpoint given the run's key signs every message it
sends with one extra trailing frame, an HMAC-SHA256 over the message and the
channel's name, and checks that frame on everything it receives before decoding
it; a message with a wrong or missing MAC is counted in `n_unauthenticated` (and
`n_rejected`) and dropped. The control ends take the key from their `token` (the
run secret). A ControlClient given a token also makes it this process's run key,
which PushEndpoints created without a key of their own sign with: that is how a
generator's rollouts get signed without its service holding the secret itself.

ipc sockets live in a directory only the run's user may enter: binding one makes
its directory mode 0700 and refuses a directory owned by another user.

Addresses: "ipc:///path" on one host, "tcp://host:port" across hosts. Binding TCP
to anything but loopback needs allow_remote=True. All sockets close with linger=0.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import secrets
import tempfile
import time
from collections import deque
from typing import Callable, Generic, TypeVar, cast, overload

import zmq

from scalerl.shared.errors import ThrottledWarning
from scalerl.shared.wire import auth
from scalerl.shared.wire.addresses import LOOPBACK_IP, bind_addresses, is_loopback
from scalerl.shared.wire.codec import decode, encode
from scalerl.shared.wire.messages import Error, Heartbeat, Message, ProtocolError, Ready
from scalerl.shared.wire.values import show

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 << 20  # peers sending more are disconnected by zmq
# The most a Ready takes (a few hundred bytes: its info is a small Details dict). An unsigned control message is
# decoded only to tell a misconfigured generator why its Ready was refused, so anything larger is refused unread
# (a 47 MB one took 3 s to decode, holding the control lock); a weight sender's ROUTER, where only Ready comes in,
# has zmq disconnect a peer sending more.
MAX_READY_BYTES = 64 << 10
# What the control server takes in one frame: Ready, Heartbeat, Error and EvalResult are a few hundred bytes (their
# dicts hold at most 64 scalars, a generator cuts an Error's text at 400 chars); 1 MiB leaves room for any of them.
# zmq disconnects a peer sending more, so a two-frame unsigned message is never hashed at the 64 MiB of the other
# sockets (rollouts, requests) before it is refused.
MAX_CONTROL_MESSAGE_BYTES = 1 << 20
LOG_INTERVAL_S = 1.0

# The run key of this process (set by a ControlClient given the run secret): what PushEndpoints without a key of
# their own sign with. None: they send unsigned, as tools and tests without a run do.
_process_key: bytes | None = None


def set_process_key(key: bytes | None) -> None:
    global _process_key
    _process_key = key


def process_key() -> bytes | None:
    return _process_key


# ---------------------------------------------------------------- addresses


def tcp_address(port: int | None = None, host: str = LOOPBACK_IP) -> str:
    """ "tcp://host:port"; port None binds to a free port (read it from `.address`)."""
    return f"tcp://{host}:{'*' if port is None else port}"


def ipc_address(name: str, directory: str | None = None) -> str:
    """ "ipc://<directory>/<name>.sock"; the directory is created if missing, mode 0700."""
    directory = directory or os.path.join(tempfile.gettempdir(), f"scalerl-{os.geteuid()}")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    return f"ipc://{os.path.join(directory, name)}.sock"


def secure_ipc_dir(address: str) -> None:
    """Make an ipc address's directory private (0700) before binding in it. Another user's directory is refused:
    its owner could replace the socket file. Raises ValueError (one line)."""
    scheme, _, path = address.partition("://")
    if scheme != "ipc":
        return
    directory = os.path.dirname(os.path.abspath(path)) or "/"
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.stat(directory)
    if st.st_uid != os.geteuid():
        raise ValueError(f"refusing to bind {address!r}: {directory} belongs to uid {st.st_uid}, not to this user")
    if st.st_mode & 0o1000:  # /tmp and its kind are shared by design: never made private, and not private
        raise ValueError(
            f"refusing to bind {address!r} in the shared directory {directory}: use a directory of its own"
        )
    if st.st_mode & 0o077:
        os.chmod(directory, 0o700)


def check_bind_address(address: str, allow_remote: bool = False) -> None:
    """Refuse to bind TCP to a non-loopback interface unless allowed."""
    scheme, _, rest = address.partition("://")
    if scheme not in ("tcp", "ipc", "inproc"):
        raise ValueError(f"unsupported address {address!r} (use tcp://, ipc:// or inproc://)")
    if scheme != "tcp" or allow_remote:
        return
    host = rest.rsplit(":", 1)[0].strip("[]")
    if not is_loopback(host):
        raise ValueError(f"refusing to bind {address!r}: not loopback (set allow_remote)")


# ---------------------------------------------------------------- routing ids


def routing_id(peer_id: str) -> bytes:
    """A fresh zmq routing id for one socket of `peer_id`: "peer_id#<16 random hex digits>". A process without the
    secret cannot guess it, so it cannot connect first under it and have the ROUTER refuse the peer (no handover).
    The peer id stays in it for logs and for the server's identity check (`names`)."""
    return f"{peer_id}#{secrets.token_hex(8)}".encode()


def names(rid: bytes, peer_id: str) -> bool:
    """Whether routing id `rid` may speak for `peer_id`: one made by routing_id(peer_id), or the bare peer id (the
    routing id of peers before random suffixes; it works, but can be squatted)."""
    pid = peer_id.encode()
    return rid == pid or rid.rpartition(b"#")[0] == pid


def show_rid(rid: bytes) -> str:
    return repr(rid.decode("utf-8", "replace")[:80])


# ---------------------------------------------------------------- liveness


class PeerMonitor:
    """Last time each peer was heard from; a peer silent for > timeout is dead."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}

    def seen(self, peer: str, now: float | None = None) -> None:
        self._last[peer] = self._clock() if now is None else now

    def last_seen(self, peer: str) -> float | None:
        return self._last.get(peer)

    def is_alive(self, peer: str, timeout_s: float, now: float | None = None) -> bool:
        last = self._last.get(peer)
        now = self._clock() if now is None else now
        return last is not None and now - last <= timeout_s

    def dead(self, timeout_s: float, now: float | None = None) -> list[str]:
        return [p for p in self._last if not self.is_alive(p, timeout_s, now)]

    def forget(self, peer: str) -> None:
        self._last.pop(peer, None)

    @property
    def peers(self) -> list[str]:
        return list(self._last)


# ---------------------------------------------------------------- endpoints


class Closing:
    """`with` support for anything with a close(): sockets must be closed (linger=0) on every exit path."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# What recv() yields: a Message on PUSH/PULL/DEALER sockets, (peer, Message) on the ROUTER.
Received = TypeVar("Received")


class _Endpoint(Closing, Generic[Received]):
    """One zmq socket, encode/decode, counters, rejection logging, linger=0 close."""

    _auth_skip = 0  # leading frames zmq adds (the ROUTER's peer identity): not signed

    def __init__(
        self,
        kind: int,
        address: str,
        *,
        bind: bool,
        allow_remote: bool = False,
        context: zmq.Context | None = None,
        key: bytes | None = None,
        channel: bytes = b"",
    ) -> None:
        self.key, self.channel = key, channel
        self.n_unauthenticated = 0
        self.socket = (context or zmq.Context.instance()).socket(kind)
        self.socket.linger = 0
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self._configure()
        if bind:
            check_bind_address(address, allow_remote)
            secure_ipc_dir(address)
            for where in reversed(bind_addresses(address)):  # the routable one last: LAST_ENDPOINT
                self.socket.bind(where)
            self.address = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        else:
            self.socket.connect(address)
            self.address = address
        self.n_sent = 0
        self.n_received = 0
        self.n_rejected = 0
        self.last_error = ""
        self._reject_log = ThrottledWarning(log, LOG_INTERVAL_S)

    def _configure(self) -> None:
        pass

    def _tick(self) -> float | None:
        """Periodic work (heartbeats); returns seconds until it is next due, or None."""
        return None

    def _handle(self, frames: list[bytes]) -> Received | None:
        raise NotImplementedError

    def _signing_key(self) -> bytes | None:
        return self.key

    def _sign(self, frames: list[bytes]) -> list[bytes]:
        key = self._signing_key()
        if key is None:
            return frames
        head, body = frames[: self._auth_skip], frames[self._auth_skip :]
        return head + body + [auth.sign(key, body, self._send_channel())]

    def _send_channel(self) -> bytes:
        """What this end's MACs are computed on (auth.from_connection for a DEALER talking to a ROUTER)."""
        return self.channel

    def _recv_channel(self, head: list[bytes]) -> bytes:
        """What a received message's MAC must be computed on; `head`: the frames zmq added (the ROUTER's peer)."""
        return self.channel

    def _authenticate(self, frames: list[bytes]) -> list[bytes] | None:
        """The frames without their MAC; None (counted, logged) when it is wrong or missing."""
        if self.key is None:
            return frames
        head, body = frames[: self._auth_skip], frames[self._auth_skip :]
        body, ok = auth.split(self.key, body, self._recv_channel(head))
        if not ok:
            self.n_unauthenticated += 1
            self._unauthenticated(head, body)
            return None
        return head + body

    def _unauthenticated(self, head: list[bytes], body: list[bytes]) -> None:
        self.reject("message without this run's MAC (wrong or missing secret)")

    def _decode(self, payload: bytes, accept: tuple[type, ...] | None) -> Message | None:
        try:
            msg = decode(payload)
            if accept is not None and not isinstance(msg, accept):
                raise ProtocolError(f"unexpected {type(msg).__name__} on this socket")
        except ProtocolError as e:
            self.reject(str(e))
            return None
        self.n_received += 1
        return msg

    def _decode_one(self, frames: list[bytes], accept: tuple[type, ...] | None) -> Message | None:
        if len(frames) != 1:
            self.reject(f"expected 1 frame, got {len(frames)}")
            return None
        return self._decode(frames[0], accept)

    def reject(self, reason: str) -> None:
        """Count and log (rate-limited) one refused message."""
        self.n_rejected += 1
        self.last_error = reason
        self._reject_log("%s rejected a message: %s", self.address, reason)

    def _recv(self, timeout_ms: int | None) -> Received | None:
        deadline = None if timeout_ms is None else time.monotonic() + max(timeout_ms, 0) / 1e3
        while True:
            due = self._tick()
            waits = [w for w in (due, None if deadline is None else deadline - time.monotonic()) if w is not None]
            wait_ms = math.ceil(max(0.0, min(waits)) * 1e3) if waits else None
            if self.socket.poll(wait_ms, zmq.POLLIN):
                frames = self._authenticate(self.socket.recv_multipart())
                out = None if frames is None else self._handle(frames)
                if out is not None:
                    return out
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _send_frames(self, frames: list[bytes], timeout_ms: int | None) -> None:
        if timeout_ms is not None and not self.socket.poll(timeout_ms, zmq.POLLOUT):
            raise TimeoutError(f"{self.address}: could not send within {timeout_ms} ms")
        self.socket.send_multipart(self._sign(frames), flags=0 if timeout_ms is None else zmq.NOBLOCK)
        self.n_sent += 1

    def close(self) -> None:
        self.socket.close(linger=0)


class PushEndpoint(_Endpoint[Message]):
    """PUSH socket: send() hands a message to one connected puller (round robin). Signed with `key`, else with
    the process's run key when one is set and `use_process_key` (a generator's rollouts)."""

    def __init__(
        self,
        address: str,
        *,
        bind: bool,
        allow_remote: bool = False,
        context: zmq.Context | None = None,
        key: bytes | None = None,
        channel: bytes = auth.ROLLOUT,
        use_process_key: bool = True,
    ) -> None:
        self.use_process_key = use_process_key
        super().__init__(
            zmq.PUSH, address, bind=bind, allow_remote=allow_remote, context=context, key=key, channel=channel
        )

    def _signing_key(self) -> bytes | None:
        return self.key if self.key is not None or not self.use_process_key else process_key()

    def send(self, msg: Message, timeout_ms: int | None = None) -> None:
        """Blocks while no puller can take it; raises TimeoutError after timeout_ms."""
        self._send_frames([encode(msg)], timeout_ms)


class PullEndpoint(_Endpoint[Received]):
    """PULL socket: recv() returns the next valid message (of an `accept`ed type)."""

    # The overloads let recv() return the accepted type, e.g. Rollout for accept=(Rollout,).
    @overload
    def __init__(
        self: PullEndpoint[Message],
        address: str,
        *,
        bind: bool,
        accept: None = None,
        allow_remote: bool = False,
        context: zmq.Context | None = None,
        key: bytes | None = None,
        channel: bytes = auth.ROLLOUT,
    ) -> None: ...

    @overload
    def __init__(
        self: PullEndpoint[Received],
        address: str,
        *,
        bind: bool,
        accept: tuple[type[Received], ...],
        allow_remote: bool = False,
        context: zmq.Context | None = None,
        key: bytes | None = None,
        channel: bytes = auth.ROLLOUT,
    ) -> None: ...

    def __init__(
        self,
        address: str,
        *,
        bind: bool,
        accept: tuple[type, ...] | None = None,
        allow_remote: bool = False,
        context: zmq.Context | None = None,
        key: bytes | None = None,
        channel: bytes = auth.ROLLOUT,
    ) -> None:
        super().__init__(
            zmq.PULL, address, bind=bind, allow_remote=allow_remote, context=context, key=key, channel=channel
        )
        self.accept = accept

    def recv(self, timeout_ms: int | None = None) -> Received | None:
        """Next valid message, or None after timeout_ms (None = wait forever)."""
        return self._recv(timeout_ms)

    def _handle(self, frames: list[bytes]) -> Received | None:
        # _decode has checked the type against accept, which the overloads tie to Received.
        return cast("Received | None", self._decode_one(frames, self.accept))


class _Heartbeating(_Endpoint[Received]):
    """Sends a Heartbeat to `_heartbeat_targets()` every `heartbeat_interval` seconds."""

    def __init__(self, *args, peer_id: str, heartbeat_interval: float, **kw) -> None:
        self.peer_id = peer_id
        self.heartbeat_interval = heartbeat_interval
        self.monitor = PeerMonitor()
        self.stats: dict[str, bool | int | float | str] = {}  # sent in each Heartbeat
        self._hb_seq = 0
        self._hb_next = 0.0
        super().__init__(*args, **kw)

    def _tick(self) -> float:
        now = time.monotonic()
        if now >= self._hb_next:
            hb = Heartbeat(peer_id=self.peer_id, seq=self._hb_seq, sent_at=time.time(), stats=dict(self.stats))
            self._hb_seq += 1
            self._hb_next = now + self.heartbeat_interval
            self._send_heartbeat(encode(hb))
        return self._hb_next - now

    def heartbeat_if_due(self) -> float:
        """Send the Heartbeat now if it is due (recv() does this too); seconds until the next one. For a loop busy
        for longer than heartbeat_interval between two recv() calls (a generator verifying code samples), which
        would otherwise look dead to the other side."""
        return self._tick()

    def _send_heartbeat(self, payload: bytes) -> None:
        raise NotImplementedError


class ControlServer(_Heartbeating[tuple[str, Message]]):
    """ROUTER socket for the control plane, bound by the trainer.

    Peers become known by sending Ready (kept in `peers`, and also returned by recv():
    a second Ready from a known peer means it restarted and lost its work). Heartbeats
    are consumed here (latest kept in `heartbeats`); everything else goes to recv().

    A peer is its peer id, not its connection: a signed Ready binds the peer id to the routing id it came from
    (which must name it, see `names`), replacing the one before, so a restarted peer takes over at its Ready and
    its old connection is no longer heard or sent to.
    """

    _auth_skip = 1  # the peer identity frame zmq prepends

    def __init__(
        self,
        address: str,
        *,
        peer_id: str = "server",
        heartbeat_interval: float = 1.0,
        allow_remote: bool = False,
        context: zmq.Context | None = None,
        token: str | None = None,
    ) -> None:
        self.token = token  # None: any peer may join (tests, tools); else Ready.token must equal it
        self.n_unauthorized = 0
        self.peers: dict[str, Ready] = {}
        self._routes: dict[str, bytes] = {}  # peer id -> routing id of its current connection
        self._peer_of: dict[bytes, str] = {}  # the reverse
        self.heartbeats: dict[str, Heartbeat] = {}
        self._early: deque[tuple[str, Message]] = deque()
        super().__init__(
            zmq.ROUTER,
            address,
            bind=True,
            allow_remote=allow_remote,
            context=context,
            peer_id=peer_id,
            heartbeat_interval=heartbeat_interval,
            key=auth.key_from_secret(token) if token else None,
            channel=auth.CONTROL,
        )

    def _configure(self) -> None:
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_CONTROL_MESSAGE_BYTES)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unreachable peer -> error, not silence
        # No handover: while a connection is alive nobody else can connect under its routing id and take its route.
        # The flip side, a process connecting first under the id a peer would use, is why ids are unguessable.
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 0)

    def _recv_channel(self, head: list[bytes]) -> bytes:
        # Bound to the connection it came in on: a captured signed Ready replayed from a new connection fails here.
        return auth.from_connection(self.channel, head[0])

    def recv(self, timeout_ms: int | None = None) -> tuple[str, Message] | None:
        """(peer_id, message) of the next non-heartbeat message, or None on timeout."""
        if self._early:
            return self._early.popleft()
        return self._recv(timeout_ms)

    def wait_for_peers(self, n: int, timeout_s: float) -> list[str]:
        """Block until n peers have sent Ready; other messages are kept for recv()."""
        deadline = time.monotonic() + timeout_s
        while len(self.peers) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(self.peers)} of {n} peers ready after {timeout_s} s")
            got = self._recv(math.ceil(left * 1e3))
            if got is not None:
                self._early.append(got)
        return list(self.peers)

    def send(self, peer: str, msg: Message) -> bool:
        """Send to one ready peer; False if it is unknown or unreachable."""
        return peer in self.peers and self._route(peer, encode(msg))

    def broadcast(self, msg: Message) -> list[str]:
        """Send to every ready peer; returns the peers it could not reach."""
        payload = encode(msg)
        return [p for p in list(self.peers) if not self._route(p, payload)]

    def dead_peers(self, timeout_s: float) -> list[str]:
        return [p for p in self.peers if not self.monitor.is_alive(p, timeout_s)]

    def forget(self, peer: str) -> None:
        self.peers.pop(peer, None)
        self._peer_of.pop(self._routes.pop(peer, b""), None)
        self.heartbeats.pop(peer, None)
        self.monitor.forget(peer)

    def _unauthenticated(self, head: list[bytes], body: list[bytes]) -> None:
        # An old or misconfigured generator's Ready: tell it why, so it exits with a reason, not a peer timeout. The
        # answer goes to the connection it came from, never to a registered peer's: it changes nothing for them.
        rid = head[0] if head else b""
        try:
            msg = decode(body[0]) if len(body) == 1 and len(body[0]) <= MAX_READY_BYTES else None
        except ProtocolError as e:
            if "protocol version" in str(e):  # a peer of another release: its MAC is computed differently too
                self.reject(f"message from {show_rid(rid)}: {e}")
                return
            msg = None
        if isinstance(msg, Ready) and names(rid, msg.peer_id) and rid not in self._peer_of:
            self.n_unauthorized += 1
            self.reject(f"Ready from {show_rid(rid)} (pid {msg.pid}) without this run's secret")
            reason = Error(peer_id=self.peer_id, code="unauthorized", message="wrong or missing run secret")
            self._send_to(rid, encode(reason))
            return
        self.reject(f"message from {show_rid(rid)} without this run's MAC (wrong or missing secret)")

    def _route(self, peer: str, payload: bytes) -> bool:
        rid = self._routes.get(peer)
        return rid is not None and self._send_to(rid, payload)

    def _send_to(self, rid: bytes, payload: bytes) -> bool:
        try:
            self.socket.send_multipart(self._sign([rid, payload]), flags=zmq.NOBLOCK)
        except zmq.ZMQError as e:  # EHOSTUNREACH (gone) or EAGAIN (not reading)
            log.debug("cannot send to %s: %s", show_rid(rid), e)
            return False
        self.n_sent += 1
        return True

    def _send_heartbeat(self, payload: bytes) -> None:
        for p in list(self.peers):
            self._route(p, payload)

    def _handle(self, frames: list[bytes]) -> tuple[str, Message] | None:
        if len(frames) != 2:
            self.reject(f"expected 1 frame, got {len(frames) - 1}")
            return None
        rid = frames[0]
        msg = self._decode(frames[1], None)
        if msg is None:
            return None
        if isinstance(msg, Ready):
            # A connection speaks for the peer id its routing id names, so a Ready cannot take another peer's route.
            if not names(rid, msg.peer_id):
                self.reject(f"Ready.peer_id {show(msg.peer_id)} != socket identity {show_rid(rid)}")
                return None
            if self.token is not None and not hmac.compare_digest(msg.token.encode(), self.token.encode()):
                self.n_unauthorized += 1
                self.reject(f"Ready from {show_rid(rid)} (pid {msg.pid}) without this run's secret")
                # Tell it why, so a misconfigured generator exits with a reason instead of a peer timeout.
                reason = Error(peer_id=self.peer_id, code="unauthorized", message="wrong or missing run secret")
                self._send_to(rid, encode(reason))
                return None
            peer = msg.peer_id
            old = self._routes.get(peer)
            if old != rid:  # a new peer, or a restarted one: its old connection is not heard or sent to again
                if old is not None:
                    log.info("peer %s reconnected as %s (was %s)", peer, show_rid(rid), show_rid(old))
                    del self._peer_of[old]
                self._routes[peer] = rid
                self._peer_of[rid] = peer
            self.peers[peer] = msg
        else:
            found = self._peer_of.get(rid)
            if found is None:
                self.reject(f"{type(msg).__name__} from {show_rid(rid)} before its Ready")
                return None
            peer = found
        self.monitor.seen(peer)
        if isinstance(msg, Heartbeat):
            self.heartbeats[peer] = msg
            return None
        return peer, msg


class ControlClient(_Heartbeating[Message]):
    """DEALER socket for the control plane, one per generator; sends Ready on creation."""

    SERVER = "server"  # name of the other end in `monitor`

    def __init__(
        self,
        address: str,
        *,
        peer_id: str,
        role: str,
        version: int = -1,
        info: dict | None = None,
        heartbeat_interval: float = 1.0,
        context: zmq.Context | None = None,
        token: str = "",
    ) -> None:
        self._routing_id = routing_id(peer_id)
        key = auth.key_from_secret(token) if token else None
        if key is not None:
            set_process_key(key)  # this process's rollouts are signed with it too (PushEndpoint)
        super().__init__(
            zmq.DEALER,
            address,
            bind=False,
            context=context,
            peer_id=peer_id,
            heartbeat_interval=heartbeat_interval,
            key=key,
            channel=auth.CONTROL,
        )
        self.send(Ready(peer_id=peer_id, role=role, version=version, pid=os.getpid(), info=info or {}, token=token))
        self._hb_next = time.monotonic() + heartbeat_interval

    def _configure(self) -> None:
        self.socket.setsockopt(zmq.ROUTING_ID, self._routing_id)

    def _send_channel(self) -> bytes:
        return auth.from_connection(self.channel, self._routing_id)

    def send(self, msg: Message, timeout_ms: int | None = None) -> None:
        self._send_frames([encode(msg)], timeout_ms)

    def recv(self, timeout_ms: int | None = None) -> Message | None:
        """Next non-heartbeat message from the server, or None on timeout."""
        return self._recv(timeout_ms)

    def server_alive(self, timeout_s: float) -> bool:
        return self.monitor.is_alive(self.SERVER, timeout_s)

    def _send_heartbeat(self, payload: bytes) -> None:
        try:
            self.socket.send_multipart(self._sign([payload]), flags=zmq.NOBLOCK)
        except zmq.Again:  # server not reading: it will look dead to us soon anyway
            pass

    def _handle(self, frames: list[bytes]) -> Message | None:
        msg = self._decode_one(frames, None)
        if msg is None:
            return None
        self.monitor.seen(self.SERVER)
        return None if isinstance(msg, Heartbeat) else msg
