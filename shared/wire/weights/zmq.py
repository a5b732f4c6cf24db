"""The zmq weight transport: the announcement and the buckets travel as one multipart message.

ZmqWeightSender binds a ROUTER and serves from a background thread. A ZmqWeightReceiver (DEALER) sends
Ready(version=v) meaning "I want a version newer than v"; it is answered, as soon as one exists, with a single
multipart message [WeightUpdate, bucket 0, bucket 1, ...] of the latest version. So publish() never waits for
generators, a late joiner gets the latest weights at once, and a slow one skips versions instead of queueing.

keep_latest=False is for a channel with one receiver (the evaluator's): the buckets are dropped as soon as the
version has gone to it, so nothing of a version is held after delivery; a receiver that asks later gets the next.

One Python thread serves every receiver: each send is NOBLOCK and zero-copy (the frames are the buckets
themselves), so it only hands references to zmq and never waits on a slow peer. The socket writes happen in zmq's
I/O threads, one connection each: `io_threads` (the trainer passes its number of generators) gives the sender a
context of its own with that many, so each generator's copy is written by a thread of its own instead of one
thread writing for all (docs/scaling.md: ~3 GB/s per thread). Python threads per generator would add nothing.
"""

from __future__ import annotations

import threading
import time
from typing import Iterable, Mapping

import torch
import zmq

from scalerl.shared.wire import auth
from scalerl.shared.wire.codec import encode
from scalerl.shared.wire.messages import ProtocolError, WeightUpdate
from scalerl.shared.wire.sockets import Closing
from scalerl.shared.wire.weights.base import AnnouncedReceiver, _parse_ready, _router, log, reject_log
from scalerl.shared.wire.weights.checkpoint_names import checkpoint_stream
from scalerl.shared.wire.weights.layout import BUCKET_BYTES, fill_buckets, make_update, unpack
from scalerl.shared.wire.weights.registry import ZMQ


class ZmqWeightSender(Closing):
    """Publishes weights to any number of ZmqWeightReceivers (latest version wins)."""

    def __init__(
        self,
        address: str,
        *,
        bucket_bytes: int = BUCKET_BYTES,
        allow_remote: bool = False,
        context: zmq.Context | None = None,
        key: bytes | None = None,
        keep_latest: bool = True,
        pin_memory: bool = False,
        io_threads: int = 1,
    ) -> None:
        self._own_context = context is None and io_threads > 1
        ctx = zmq.Context(io_threads=io_threads) if self._own_context else (context or zmq.Context.instance())
        self._context = ctx
        self.key = key  # the run's HMAC key (shared/wire/auth.py); None: unsigned (tests and tools)
        self.bucket_bytes = bucket_bytes
        self.keep_latest = keep_latest
        # Page-locked buckets make the copies from a GPU trainer's tensors DMA transfers. CUDA only, and never run
        # on a GPU yet (docs/vllm.md).
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.version = -1  # the newest version published (its buckets may be gone: keep_latest=False)
        self._router = _router(address, allow_remote, ctx)
        self.address = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._lock = threading.Lock()
        self._latest: tuple[int, bytes, list, list[torch.Tensor]] | None = None
        self._peers: set[str] = set()
        self.n_rejected = 0
        self.n_ready = 0  # Readys accepted (a receiver sends one on connecting and after each transfer)
        self._reject_log = reject_log()
        self.n_transfers = 0
        self.failure = ""  # set if the serving thread died
        wake = f"inproc://scalerl-weights-{id(self)}"
        self._wake_tx = ctx.socket(zmq.PAIR)
        self._wake_tx.linger = 0
        self._wake_tx.bind(wake)
        wake_rx = ctx.socket(zmq.PAIR)
        wake_rx.linger = 0
        wake_rx.connect(wake)
        self._thread = threading.Thread(target=self._serve, args=(wake_rx,), daemon=True, name="zmq-weight-sender")
        self._thread.start()

    def publish(self, named_tensors: Mapping[str, torch.Tensor], version: int) -> WeightUpdate:
        """Snapshot the tensors and make them the version receivers get next."""
        return self.publish_stream(named_tensors, iter(named_tensors.items()), version)

    def publish_stream(
        self, meta: Mapping[str, torch.Tensor], pairs: Iterable[tuple[str, torch.Tensor]], version: int
    ) -> WeightUpdate:
        """publish(), with the tensors coming one at a time in meta's order (meta: shapes and dtypes)."""
        if self.failure:
            raise RuntimeError(f"zmq weight sender thread stopped: {self.failure}")
        meta, pairs = checkpoint_stream(meta, pairs)  # fused MoE experts -> one tensor per expert
        update, sizes, specs = make_update(meta, version, ZMQ, self.address, self.bucket_bytes)
        buckets: list[torch.Tensor] = []
        fill_buckets(sizes, specs, pairs, "cpu", buckets.append, pin_memory=self.pin_memory)
        views: list = [b.numpy().data for b in buckets]
        header = encode(update)
        if self.key is not None:  # once per version, over the header and every bucket
            views.append(auth.sign(self.key, [header, *views], auth.WEIGHTS))
        with self._lock:
            if version <= self.version:
                raise ValueError(f"version {version} is not newer than {self.version}")
            self.version = version
            self._latest = (version, header, views, buckets)
        self._wake_tx.send(b"new")
        return update

    def holds_buckets(self) -> bool:
        """Whether a version's buckets are still held for receivers yet to ask."""
        with self._lock:
            return self._latest is not None

    def wait_for_receivers(self, n: int, timeout_s: float) -> None:
        """Block until n distinct receivers have connected (said Ready)."""
        deadline = time.monotonic() + timeout_s
        while len(self._peers) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self._peers)} of {n} weight receivers after {timeout_s} s")
            time.sleep(0.005)

    def _serve(self, wake_rx: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(wake_rx, zmq.POLLIN)
        waiting: dict[bytes, int] = {}  # routing id -> version it already has
        routes: dict[str, bytes] = {}  # peer id -> routing id of its latest Ready
        try:
            while True:
                events = dict(poller.poll())
                if wake_rx in events and wake_rx.recv() == b"stop":
                    return
                while self._router in events:
                    try:
                        frames = self._router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        ready = _parse_ready(frames, self.key)
                    except ProtocolError as e:
                        self.n_rejected += 1
                        self._reject_log("weight sender rejected a message: %s", e)
                        continue
                    # A restarted receiver comes back under a new routing id: the old one would take a version
                    # meant for it (the only one sent when not keep_latest) into a closed connection.
                    old = routes.get(ready.peer_id)
                    if old is not None and old != frames[0]:
                        waiting.pop(old, None)
                    routes[ready.peer_id] = frames[0]
                    waiting[frames[0]] = ready.version
                    self._peers.add(ready.peer_id)
                    self.n_ready += 1
                with self._lock:
                    latest = self._latest
                if latest is None:
                    continue
                version, header, views = latest[:3]  # the frames are the buckets' memory
                for ident in [i for i, have in waiting.items() if have < version]:
                    del waiting[ident]
                    # Non-blocking; a peer that vanished is dropped silently by ROUTER.
                    self._router.send_multipart([ident, header, *views], copy=False, flags=zmq.NOBLOCK)
                    self.n_transfers += 1
                    if not self.keep_latest:
                        # zmq holds the frames until they are written, then nothing refers to the buckets.
                        del latest, views
                        with self._lock:
                            if self._latest is not None and self._latest[0] == version:
                                self._latest = None
                        break
        except Exception as e:  # surfaced by the next publish() rather than lost
            self.failure = f"{type(e).__name__}: {e}"
            log.exception("zmq weight sender thread stopped")
        finally:
            wake_rx.close(linger=0)
            self._router.close(linger=0)

    def close(self) -> None:
        if self._thread.is_alive():
            self._wake_tx.send(b"stop")
            self._thread.join()
        self._wake_tx.close(linger=0)
        if self._own_context:
            self._context.term()


class ZmqWeightReceiver(AnnouncedReceiver):
    """Receives the newest published version, straight into torch-owned CPU buckets."""

    transport = ZMQ

    def __init__(
        self,
        address: str,
        *,
        peer_id: str,
        version: int = -1,
        context: zmq.Context | None = None,
        key: bytes | None = None,
    ) -> None:
        super().__init__(address, peer_id, version, context, key)

    def _after_reject(self) -> None:
        self._ask()  # the sender thinks we are served

    def receive(self, timeout_s: float | None = 0.0) -> tuple[int, dict[str, torch.Tensor]] | None:
        """(version, tensors) if a newer version arrived within timeout_s, else None."""
        update = self._next_header(timeout_s, announcement_only=False)
        if update is None:
            return None
        try:
            buckets = []
            for i, size in enumerate(update.bucket_sizes):
                if not self.socket.get(zmq.RCVMORE):
                    raise ProtocolError(f"bucket {i} of {len(update.bucket_sizes)} missing")
                try:  # the header is not authenticated yet (its MAC comes last): a size no memory holds is its fault
                    buf = torch.empty(size, dtype=torch.uint8)
                except (RuntimeError, TypeError, OverflowError, ValueError, MemoryError):
                    raise ProtocolError(f"bucket {i}: {size} bytes announced, more than can be allocated") from None
                got = self.socket.recv_into(buf.numpy().data) if size else len(self.socket.recv())
                if got != size:
                    raise ProtocolError(f"bucket {i}: {got} bytes, manifest says {size}")
                buckets.append(buf)
            if self.key is not None:
                mac = self.socket.recv() if self.socket.get(zmq.RCVMORE) else b""
                frames: list = [self._header, *(b.numpy().data for b in buckets)]
                if not auth.verify(self.key, frames, mac, auth.WEIGHTS):
                    raise ProtocolError("unauthenticated weights (wrong or missing MAC)")
            if self.socket.get(zmq.RCVMORE):
                raise ProtocolError("more frames than buckets")
        except ProtocolError as e:
            self._reject(str(e))
            return None
        self.version = update.version
        self._ask()  # ask for the next one
        return update.version, unpack(buckets, update.manifest)
