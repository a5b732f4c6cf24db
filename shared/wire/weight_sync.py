"""Trainer -> generator policy weights, over ZeroMQ or torch.distributed.

Both transports flatten the named tensors into byte buckets (~64 MiB; a larger
tensor gets a bucket of its own) described by a WeightUpdate (messages.py)
whose manifest gives each tensor's name, dtype, shape, bucket and offset.

  zmq:  ZmqWeightSender binds a ROUTER and serves from a background thread. A
        ZmqWeightReceiver (DEALER) sends Ready(version=v) meaning "I want a version
        newer than v"; it is answered, as soon as one exists, with a single
        multipart message [WeightUpdate, bucket 0, bucket 1, ...] of the latest
        version. So publish() never waits for generators, a late joiner gets the
        latest weights at once, and a slow one skips versions instead of queueing.
  dist: DistWeightSender (rank 0 of a weight process group holding the trainer
        and the generators) sends the WeightUpdate over zmq to every receiver,
        then broadcasts the buckets. publish() blocks until every receiver has
        called receive(), so generators must poll receive() regularly (e.g.
        between decode steps). Collectives only start after an announcement,
        so nothing sits pending on an NCCL stream between updates.
  vllm-nccl / vllm-gloo: the same announcement and broadcast, but the receivers
        are vLLM's workers (its weight-transfer engines; AnnouncementReceiver in the
        generator only hears the WeightUpdate), so the buckets are laid out as
        vLLM's packed_tensor module cuts them (packed_layout), not aligned.

Senders take the tensors as a stream (publish_stream): the trainer gathers and
casts one tensor at a time (FSDP2), so only one bucket is ever held on the device.

Receivers return tensors that are views into freshly allocated buckets: the
caller may keep or modify them. Tensors travel as raw little-endian bytes.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import sys
import threading
import time
from typing import Callable, Iterable, Mapping
from urllib.parse import urlparse

import torch
import torch.distributed as dist
import zmq

from scalerl.shared.wire.codec import decode, encode
from scalerl.shared.wire.dtypes import DTYPE_NAMES, TORCH_DTYPES
from scalerl.shared.wire.messages import ProtocolError, Ready, TensorSpec, WeightUpdate
from scalerl.shared.wire.sockets import Closing, check_bind_address

log = logging.getLogger(__name__)

BUCKET_BYTES = 64 << 20
# vLLM's packed transfer: the worker cuts chunks from this size (sent in its init info), the trainer must agree.
PACKED_BUFFER_BYTES = 256 << 20
PACKED_NUM_BUFFERS = 2
BROADCAST_TRANSPORTS = ("dist", "vllm-nccl", "vllm-gloo")
ALIGN = 64  # byte alignment of each tensor inside a bucket
SRC_RANK = 0  # the sender's rank in a dist weight group

if sys.byteorder != "little":  # raw tensor bytes are little-endian on the wire
    raise ImportError("scalerl weight sync needs a little-endian host")

# ---------------------------------------------------------------- buckets


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
) -> None:
    """Copy a stream of (name, tensor), in manifest order, into buckets; hand each bucket to on_bucket as soon
    as it is full. Only one bucket exists at a time, and each tensor can be freed once copied."""
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
            bucket = torch.zeros(sizes[current], dtype=torch.uint8, device=device)
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


def _make_update(named, version, transport, address, bucket_bytes):
    layout = packed_layout if transport.startswith("vllm-") else plan_buckets
    sizes, specs = layout(named, bucket_bytes)
    update = WeightUpdate(
        version=version, transport=transport, address=address, bucket_sizes=tuple(sizes), manifest=tuple(specs)
    )
    return update, sizes, specs


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


class _Receiver(Closing):
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


# ---------------------------------------------------------------- zmq


class ZmqWeightSender(Closing):
    """Publishes weights to any number of ZmqWeightReceivers (latest version wins)."""

    def __init__(
        self,
        address: str,
        *,
        bucket_bytes: int = BUCKET_BYTES,
        allow_remote: bool = False,
        context: zmq.Context | None = None,
    ) -> None:
        ctx = context or zmq.Context.instance()
        self.bucket_bytes = bucket_bytes
        self._router = _router(address, allow_remote, ctx)
        self.address = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._lock = threading.Lock()
        self._latest: tuple[int, bytes, list[memoryview], list[torch.Tensor]] | None = None
        self._peers: set[str] = set()
        self.n_rejected = 0
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
        update, sizes, specs = _make_update(meta, version, "zmq", self.address, self.bucket_bytes)
        buckets: list[torch.Tensor] = []
        fill_buckets(sizes, specs, pairs, "cpu", buckets.append)
        views = [b.numpy().data for b in buckets]
        with self._lock:
            if self._latest is not None and version <= self._latest[0]:
                raise ValueError(f"version {version} is not newer than {self._latest[0]}")
            self._latest = (version, encode(update), views, buckets)
        self._wake_tx.send(b"new")
        return update

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
                        ready = _parse_ready(frames)
                    except ProtocolError as e:
                        self.n_rejected += 1
                        log.warning("weight sender rejected a request: %s", e)
                        continue
                    waiting[frames[0]] = ready.version
                    self._peers.add(ready.peer_id)
                with self._lock:
                    latest = self._latest
                if latest is None:
                    continue
                version, header, views, _ = latest
                for ident in [i for i, have in waiting.items() if have < version]:
                    del waiting[ident]
                    # Non-blocking; a peer that vanished is dropped silently by ROUTER.
                    self._router.send_multipart([ident, header, *views], copy=False, flags=zmq.NOBLOCK)
                    self.n_transfers += 1
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


class ZmqWeightReceiver(_Receiver):
    """Receives the newest published version, straight into torch-owned CPU buckets."""

    transport = "zmq"

    def __init__(self, address: str, *, peer_id: str, version: int = -1, context: zmq.Context | None = None) -> None:
        super().__init__(address, peer_id, version, context)

    def _after_reject(self) -> None:
        self.socket.send(_ready(self.peer_id, self.version))  # the sender thinks we are served

    def receive(self, timeout_s: float | None = 0.0) -> tuple[int, dict[str, torch.Tensor]] | None:
        """(version, tensors) if a newer version arrived within timeout_s, else None."""
        update = self._next_header(timeout_s)
        if update is None:
            return None
        try:
            buckets = []
            for i, size in enumerate(update.bucket_sizes):
                if not self.socket.get(zmq.RCVMORE):
                    raise ProtocolError(f"bucket {i} of {len(update.bucket_sizes)} missing")
                buf = torch.empty(size, dtype=torch.uint8)
                got = self.socket.recv_into(buf.numpy().data) if size else len(self.socket.recv())
                if got != size:
                    raise ProtocolError(f"bucket {i}: {got} bytes, manifest says {size}")
                buckets.append(buf)
            if self.socket.get(zmq.RCVMORE):
                raise ProtocolError("more frames than buckets")
        except ProtocolError as e:
            self._reject(str(e))
            return None
        self.version = update.version
        self.socket.send(_ready(self.peer_id, self.version))  # ask for the next one
        return update.version, unpack(buckets, update.manifest)


# ---------------------------------------------------------------- torch.distributed


def open_weight_group(
    init_method: str, rank: int, world_size: int, *, backend: str = "gloo", timeout_s: float = 1800.0
):
    """A process group of its own (the default group is left alone) for weight broadcasts.

    init_method is "tcp://host:port"; rank 0 (the trainer) hosts the rendezvous store
    there. The timeout bounds how long a broadcast waits for a slow receiver.
    """
    url = urlparse(init_method)
    if url.scheme != "tcp" or not url.hostname or not url.port:
        raise ValueError(f"init_method must be tcp://host:port, got {init_method!r}")
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(url.hostname, url.port, world_size, rank == 0, timeout=timeout)
    if backend == "gloo":
        # Private in torch and absent from its stubs, but the only way to give gloo a timeout of its own.
        opts = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]
        opts._timeout = timeout
        # On one host use loopback; across hosts gloo picks the interface
        # (GLOO_SOCKET_IFNAME) as torch.distributed does.
        host = "127.0.0.1" if url.hostname in ("127.0.0.1", "localhost") else ""
        opts._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
        return dist.ProcessGroupGloo(store, rank, world_size, opts)
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world_size, opts)
    raise ValueError(f"unknown backend {backend!r} (gloo or nccl)")


class DistWeightSender(Closing):
    """Rank 0 of a weight group: announce over zmq, then broadcast the buckets.

    transport "dist": the receivers are DistWeightReceivers (aligned buckets, plan_buckets). "vllm-nccl" /
    "vllm-gloo": they are vLLM workers (packed_layout, bucket_bytes = the packed buffer size their init info
    carries). `group` is anything with broadcast(tensor, src): a torch ProcessGroup (its Work is waited on) or
    vLLM's PyNcclCommunicator; it may be set after construction, before the first publish.
    """

    def __init__(
        self,
        address: str,
        group,
        *,
        n_receivers: int,
        group_address: str = "",
        device: str | torch.device = "cpu",
        bucket_bytes: int = BUCKET_BYTES,
        allow_remote: bool = False,
        context: zmq.Context | None = None,
        transport: str = "dist",
    ) -> None:
        if transport not in BROADCAST_TRANSPORTS:
            raise ValueError(f"transport must be one of {BROADCAST_TRANSPORTS}, not {transport!r}")
        self.group = group
        self.transport = transport
        self.n_receivers = n_receivers
        self.group_address = group_address
        self.device = device
        self.bucket_bytes = bucket_bytes
        self.n_rejected = 0
        self.version = -1
        self.peers: dict[str, bytes] = {}  # peer id -> routing id
        self._router = _router(address, allow_remote, context)
        self.address = self._router.getsockopt_string(zmq.LAST_ENDPOINT)

    def wait_for_receivers(self, n: int | None = None, timeout_s: float = 300.0) -> None:
        """Block until n (default: all) receivers have said Ready."""
        n = self.n_receivers if n is None else n
        deadline = time.monotonic() + timeout_s
        while len(self.peers) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not self._router.poll(math.ceil(left * 1e3), zmq.POLLIN):
                raise TimeoutError(f"{len(self.peers)} of {n} weight receivers after {timeout_s} s")
            frames = self._router.recv_multipart()
            try:
                self.peers[_parse_ready(frames).peer_id] = frames[0]
            except ProtocolError as e:
                self.n_rejected += 1
                log.warning("weight sender rejected a message: %s", e)

    def publish(
        self, named_tensors: Mapping[str, torch.Tensor], version: int, timeout_s: float = 300.0
    ) -> WeightUpdate:
        """Announce and broadcast; returns once every receiver has the weights."""
        return self.publish_stream(named_tensors, iter(named_tensors.items()), version, timeout_s)

    def publish_stream(
        self,
        meta: Mapping[str, torch.Tensor],
        pairs: Iterable[tuple[str, torch.Tensor]],
        version: int,
        timeout_s: float = 300.0,
    ) -> WeightUpdate:
        """publish(), with the tensors coming one at a time in meta's order: each bucket is broadcast as soon as
        it is full, so the stream's producer (an FSDP2 gather) and the broadcast take turns."""
        if version <= self.version:
            raise ValueError(f"version {version} is not newer than {self.version}")
        if self.group is None:
            raise RuntimeError("DistWeightSender.group is not set")
        self.wait_for_receivers(timeout_s=timeout_s)
        update, sizes, specs = _make_update(meta, version, self.transport, self.group_address, self.bucket_bytes)
        header = encode(update)
        for ident in self.peers.values():
            self._router.send_multipart([ident, header])
        fill_buckets(sizes, specs, pairs, self.device, self._broadcast)
        self.version = version
        return update

    def _broadcast(self, bucket: torch.Tensor) -> None:
        work = self.group.broadcast(bucket, SRC_RANK)
        if work is not None:  # torch's ProcessGroup is asynchronous; PyNcclCommunicator enqueues on the stream
            work.wait()

    def close(self) -> None:
        self._router.close(linger=0)


class DistWeightReceiver(_Receiver):
    """A generator's end of a weight group: on an announcement, join the broadcasts."""

    transport = "dist"

    def __init__(
        self,
        address: str,
        group,
        *,
        peer_id: str,
        version: int = -1,
        device: str | torch.device = "cpu",
        context: zmq.Context | None = None,
    ) -> None:
        super().__init__(address, peer_id, version, context)
        self.group = group
        self.device = device

    def receive(self, timeout_s: float | None = 0.0) -> tuple[int, dict[str, torch.Tensor]] | None:
        """(version, tensors) if an update was announced within timeout_s, else None.

        A rejected announcement leaves the sender waiting in its broadcast until the
        group's timeout: it means sender and receiver run different code.
        """
        update = self._next_header(timeout_s)
        if update is None:
            return None
        buckets = [torch.empty(n, dtype=torch.uint8, device=self.device) for n in update.bucket_sizes]
        for b in buckets:
            self.group.broadcast(b, SRC_RANK).wait()
        self.version = update.version
        return update.version, unpack(buckets, update.manifest)


class AnnouncementReceiver(_Receiver):
    """A vLLM generator's end of vllm-nccl / vllm-gloo: only the WeightUpdate arrives here; the generator then
    has its vLLM workers join the broadcasts (update_weights with the manifest's names, dtypes and shapes)."""

    def __init__(
        self, address: str, *, transport: str, peer_id: str, version: int = -1, context: zmq.Context | None = None
    ) -> None:
        if not transport.startswith("vllm-"):
            raise ValueError(f"AnnouncementReceiver is for the vllm-* transports, not {transport!r}")
        self.transport = transport
        super().__init__(address, peer_id, version, context)

    def receive(self, timeout_s: float | None = 0.0) -> tuple[int, WeightUpdate] | None:
        """(version, the announcement) if one arrived within timeout_s. The caller must then receive the
        broadcasts, or the sender waits in them until its group's timeout."""
        update = self._next_header(timeout_s)
        if update is None:
            return None
        self.version = update.version
        return update.version, update
