"""The broadcast weight transports: announced over zmq, then broadcast from rank 0 of a weight process group.

transport "dist": the receivers are scalerl's DistWeightReceivers (aligned buckets). publish() blocks until every
receiver has called receive(), so generators must poll receive() regularly (between decode steps). Collectives
only start after an announcement, so nothing sits pending on an NCCL stream between updates.
"vllm-nccl" / "vllm-gloo": the same announcement and broadcast, but the receivers are vLLM's workers (its
weight-transfer engines; AnnouncementReceiver in the generator only hears the WeightUpdate), so the buckets are
laid out as vLLM's packed_tensor module cuts them (packed_layout), not aligned.

Every update has a deadline (publish_stream's timeout_s, from the announcement to the last bucket): a receiver
that dies or stops receiving ends it with a WeightDeliveryError naming the version, the transport and the deadline.
The group is then aborted and the sender refuses every later version: a broadcast group cannot lose a member and go
on (the collectives of the survivors would pair up wrongly), so the trainer fails the run rather than drop the peer.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import time
from typing import Iterable, Mapping, NoReturn
from urllib.parse import urlparse

import torch
import torch.distributed as dist
import zmq

from scalerl.shared.wire.addresses import LOOPBACK_IP, is_loopback, loopback_listener
from scalerl.shared.wire.codec import encode
from scalerl.shared.wire.messages import ProtocolError, WeightUpdate
from scalerl.shared.wire.sockets import Closing
from scalerl.shared.wire.weights.base import AnnouncedReceiver, _parse_ready, _router, log, reject_log, signed
from scalerl.shared.wire.weights.checkpoint_names import checkpoint_stream
from scalerl.shared.wire.weights.layout import BUCKET_BYTES, fill_buckets, make_update, unpack
from scalerl.shared.wire.weights.registry import DIST, weight_transport

SRC_RANK = 0  # the sender's rank in a dist weight group
POLL_S = 0.0005  # how often a PyNccl broadcast's completion is polled (it has no wait with a timeout)


class WeightDeliveryError(RuntimeError):
    """A broadcast update that did not reach every receiver by its deadline (or whose group failed)."""


class _GroupFailed(Exception):
    """The group's own error during a broadcast (its cause), told apart from the tensor stream's."""


def _one_line(e: BaseException) -> str:
    """The first sentence of gloo's message, without its source location: "[.../pair.cc:553] Connection closed by
    peer [127.0.0.1]:56207. This is typically caused by a remote worker crashing. ..." """
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0]


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
    # TCPStore's server listens on every interface whatever host it is given: on one host, hand it a socket
    # already listening on loopback, so the rendezvous (which anyone who reaches it could join) stays local.
    local = _loopback_ip(url.hostname)  # None: another host; the store and gloo's device then pick as torch does
    listen_fd = loopback_listener(local, url.port)[0] if rank == 0 and local is not None else None
    store = dist.TCPStore(url.hostname, url.port, world_size, rank == 0, timeout=timeout, master_listen_fd=listen_fd)
    if backend == "gloo":
        # Private in torch and absent from its stubs, but the only way to give gloo a timeout of its own.
        opts = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]
        opts._timeout = timeout
        opts._devices = _gloo_devices(local)
        return dist.ProcessGroupGloo(store, rank, world_size, opts)
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world_size, opts)
    raise ValueError(f"unknown backend {backend!r} (gloo or nccl)")


def _gloo_devices(local: str | None) -> list:
    """On one host, loopback at the rendezvous' address; across hosts the interfaces GLOO_SOCKET_IFNAME names, else
    gloo's default, as torch.distributed picks (create_device(hostname="") raised ValueError: no group across hosts)."""
    if local is not None:
        return [dist.ProcessGroupGloo.create_device(hostname=local)]
    names = [n for n in os.environ.get("GLOO_SOCKET_IFNAME", "").split(",") if n]
    if names:
        return [dist.ProcessGroupGloo.create_device(interface=n) for n in names]
    return [dist.ProcessGroupGloo.create_default_device()]


def _loopback_ip(host: str) -> str | None:
    """The loopback IP that `host` names (localhost: 127.0.0.1), else None. One answer for both the rendezvous
    listener and gloo's device: ::1 or 127.0.0.2 got a loopback store but a gloo device on any interface."""
    if not is_loopback(host):
        return None
    return LOOPBACK_IP if host == "localhost" else host.strip("[]")


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
        transport: str = DIST,
        key: bytes | None = None,
    ) -> None:
        if not weight_transport(transport).broadcast:
            raise ValueError(f"DistWeightSender is for the broadcast transports, not {transport!r}")
        self.group = group
        self.transport = transport
        self.key = key  # the run's HMAC key: the announcements are signed (the broadcasts are the group's)
        self.n_receivers = n_receivers
        self.group_address = group_address
        self.device = device
        self.bucket_bytes = bucket_bytes
        self.n_rejected = 0
        self._reject_log = reject_log()
        self.version = -1
        self.failure = ""  # set when an update failed: the group is aborted and no later version can go out
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
                self.peers[_parse_ready(frames, self.key).peer_id] = frames[0]
            except ProtocolError as e:
                self.n_rejected += 1
                self._reject_log("weight sender rejected a message: %s", e)

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
        it is full, so the stream's producer (an FSDP2 gather) and the broadcast take turns. Every receiver must
        have the whole version within timeout_s of the announcement, or WeightDeliveryError."""
        if self.failure:
            raise WeightDeliveryError(f"the weight group failed earlier ({self.failure}); v{version} not sent")
        if version <= self.version:
            raise ValueError(f"version {version} is not newer than {self.version}")
        if self.group is None:
            raise RuntimeError("DistWeightSender.group is not set")
        self.wait_for_receivers(timeout_s=timeout_s)
        meta, pairs = checkpoint_stream(meta, pairs)  # fused MoE experts -> one tensor per expert
        update, sizes, specs = make_update(meta, version, self.transport, self.group_address, self.bucket_bytes)
        message = signed(self.key, [encode(update)])
        deadline = time.monotonic() + timeout_s
        for ident in self.peers.values():
            self._router.send_multipart([ident, *message])
        try:
            fill_buckets(sizes, specs, pairs, self.device, lambda b: self._broadcast(b, deadline))
        except TimeoutError:
            self._fail(version, f"not every receiver had it within the {timeout_s:g} s deadline")
        except _GroupFailed as e:  # a receiver died (gloo says so at once)
            self._fail(
                version, f"the broadcast failed before the {timeout_s:g} s deadline: {_one_line(e.__cause__ or e)}"
            )
        if torch.device(self.device).type == "cuda":  # the last bucket is on the wire before publish() returns
            torch.cuda.current_stream(torch.device(self.device)).synchronize()  # never run: no GPU here
        self.version = version
        return update

    def _broadcast(self, bucket: torch.Tensor, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            work = self.group.broadcast(bucket, SRC_RANK)
            if work is not None:
                # A torch ProcessGroup: a wait with a timeout raises at the deadline ("Operation timed out"); for
                # NCCL it also blocks the host until the bucket is sent, so publish() reports delivery's time.
                work.wait(datetime.timedelta(seconds=left))
                return
        except RuntimeError as e:
            if time.monotonic() >= deadline - 0.05:  # gloo's own clock may fire a hair before ours
                raise TimeoutError from None
            raise _GroupFailed from e
        if bucket.device.type != "cuda":  # a communicator that returned None on CPU has finished (vllm-gloo's)
            return
        # vLLM's PyNcclCommunicator enqueues on the current CUDA stream and returns None. NCCL has no watchdog
        # here, so a dead receiver would hang the stream for ever: poll an event recorded behind the broadcast.
        # This also synchronises before publish() reports its time. Never run: no GPU here (docs/vllm.md).
        event = torch.cuda.Event()
        event.record()
        while not event.query():
            if time.monotonic() > deadline:
                raise TimeoutError
            time.sleep(POLL_S)

    def _fail(self, version: int, why: str) -> NoReturn:
        self.failure = f"v{version}: {why}"
        self._abort()
        raise WeightDeliveryError(f"weights v{version} over {self.transport}: {why}; the weight group is aborted")

    def _abort(self) -> None:
        """End the group without waiting on its peers: a pending collective must not keep the process alive."""
        group = self.group
        try:
            if hasattr(group, "abort"):  # torch ProcessGroup (gloo, NCCL)
                group.abort()
            else:  # vLLM's PyNcclCommunicator: ncclCommAbort through its library. Never run: no GPU here.
                nccl, comm = getattr(group, "nccl", None), getattr(group, "comm", None)
                abort = getattr(nccl, "ncclCommAbort", None)
                if abort is None and nccl is not None and hasattr(nccl, "lib"):
                    abort = getattr(nccl.lib, "ncclCommAbort", None)
                if abort is not None and comm is not None:
                    abort(comm)
        except Exception as e:  # the update's own error is what the caller needs to see
            log.warning("aborting the weight group: %s", e)

    def close(self) -> None:
        self._router.close(linger=0)


class DistWeightReceiver(AnnouncedReceiver):
    """A generator's end of a weight group: on an announcement, join the broadcasts."""

    transport = DIST

    def __init__(
        self,
        address: str,
        group,
        *,
        peer_id: str,
        version: int = -1,
        device: str | torch.device = "cpu",
        context: zmq.Context | None = None,
        key: bytes | None = None,
    ) -> None:
        super().__init__(address, peer_id, version, context, key)
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


class AnnouncementReceiver(AnnouncedReceiver):
    """A vLLM generator's end of vllm-nccl / vllm-gloo: only the WeightUpdate arrives here; the generator then
    has its vLLM workers join the broadcasts (update_weights with the manifest's names, dtypes and shapes)."""

    def __init__(
        self,
        address: str,
        *,
        transport: str,
        peer_id: str,
        version: int = -1,
        context: zmq.Context | None = None,
        key: bytes | None = None,
    ) -> None:
        if weight_transport(transport).vllm_engine is None:
            raise ValueError(f"AnnouncementReceiver is for the transports vLLM's workers receive, not {transport!r}")
        self.transport = transport
        super().__init__(address, peer_id, version, context, key)

    def receive(self, timeout_s: float | None = 0.0) -> tuple[int, WeightUpdate] | None:
        """(version, the announcement) if one arrived within timeout_s. The caller must then receive the
        broadcasts, or the sender waits in them until its group's timeout."""
        update = self._next_header(timeout_s)
        if update is None:
            return None
        self.version = update.version
        return update.version, update
