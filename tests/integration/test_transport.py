"""Transport endpoints over real zmq sockets, with peers in spawned processes."""

from __future__ import annotations

import multiprocessing as mp
import random
import tempfile
import time

import msgpack
import numpy as np
import pytest
import zmq
from conftest import corrupt

from scalerl.shared.wire.codec import PROTOCOL_VERSION, decode, encode
from scalerl.shared.wire.messages import (
    Error,
    GenerationRequest,
    Heartbeat,
    ProtocolError,
    Ready,
    Rollout,
    SamplingParams,
    Shutdown,
)
from scalerl.shared.wire.sockets import (
    ControlClient,
    ControlServer,
    PeerMonitor,
    PullEndpoint,
    PushEndpoint,
    check_bind_address,
    ipc_address,
    tcp_address,
)


def spawn(target, *args) -> mp.Process:
    p = mp.get_context("spawn").Process(target=target, args=args, daemon=True)
    p.start()
    return p


def finish(p: mp.Process, timeout: float = 30.0) -> int:
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail("child process hung")
    return p.exitcode


@pytest.fixture
def ipc_dir():
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="srl") as d:
        yield d


def request(group_id: str, n_samples: int = 3, prompt=(5, 6, 7)) -> GenerationRequest:
    return GenerationRequest(
        group_id=group_id,
        prompt_ids=list(prompt),
        n_samples=n_samples,
        prompt_index=4,
        item_id=f"item-{group_id}",
        verifier="math",
        answer="42",
        sampling=SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=8, thinking_budget=5),
    )


# ---------------------------------------------------------------- child processes


def fake_generator(requests_addr: str, rollouts_addr: str, n_requests: int) -> None:
    """Answers each request with n_samples rollouts derived from it."""
    with (
        PullEndpoint(requests_addr, bind=False, accept=(GenerationRequest,)) as pull,
        PushEndpoint(rollouts_addr, bind=False) as push,
    ):
        for _ in range(n_requests):
            req = pull.recv(timeout_ms=20_000)
            assert req is not None, "no request arrived"
            for k in range(req.n_samples):
                n = 4 + k
                push.send(
                    Rollout(
                        group_id=req.group_id,
                        sample_index=k,
                        prompt_index=req.prompt_index,
                        item_id=req.item_id,
                        prompt_ids=req.prompt_ids,
                        completion_ids=np.arange(n) + int(req.prompt_ids.sum()),
                        logprobs=-np.linspace(0.1, 1.0, n),
                        versions=[3] * n,
                        forced=[0] * n,
                        finish_reason="stop",
                        reward=float(k),
                        verifier_info={"answer": req.answer},
                        t_queued=1.0,
                        t_started=2.0,
                        t_finished=3.0,
                    ),
                    timeout_ms=10_000,
                )
        time.sleep(0.2)  # linger=0: let the last rollouts leave before closing


def robust_receiver(addr: str, report_addr: str) -> None:
    """Counts garbage until a request named 'final' arrives, then reports its counters."""
    with (
        PullEndpoint(addr, bind=True, accept=(GenerationRequest,)) as pull,
        PushEndpoint(report_addr, bind=False) as report,
    ):
        while True:
            msg = pull.recv(timeout_ms=30_000)
            assert msg is not None, "no final message"
            if msg.group_id == "final":
                break
        report.send(
            Heartbeat(
                peer_id="receiver",
                seq=0,
                sent_at=time.time(),
                stats={
                    "n_rejected": pull.n_rejected,
                    "n_received": pull.n_received,
                },
            ),
            timeout_ms=10_000,
        )
        time.sleep(0.2)


def early_client(addr: str) -> None:
    """Connects (before the server binds), speaks at once, answers the server's first word."""
    with ControlClient(addr, peer_id="gen-0", role="generator", version=2, heartbeat_interval=0.05) as client:
        client.send(Error(peer_id="gen-0", code="early", message="sent before the server bound"))
        msg = client.recv(timeout_ms=20_000)
        assert isinstance(msg, Shutdown), msg
        client.send(Error(peer_id="gen-0", code="ack", message=msg.reason))
        time.sleep(0.2)


def heartbeating_client(addr: str) -> None:
    with ControlClient(addr, peer_id="gen-hb", role="generator", heartbeat_interval=0.05) as c:
        while True:
            c.recv(timeout_ms=100)


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_request_rollout_round_trip(transport, ipc_dir):
    if transport == "ipc":
        req_addr, roll_addr = ipc_address("req", ipc_dir), ipc_address("roll", ipc_dir)
    else:
        req_addr = roll_addr = tcp_address()
    with PushEndpoint(req_addr, bind=True) as push, PullEndpoint(roll_addr, bind=True, accept=(Rollout,)) as pull:
        sent = [request(f"g{i}", n_samples=i + 1, prompt=(i, 2 * i, 100)) for i in range(3)]
        # Sent while the generator is still starting: PUSH holds them until it connects.
        gen = spawn(fake_generator, push.address, pull.address, len(sent))
        for r in sent:
            push.send(r, timeout_ms=20_000)
        got = [pull.recv(timeout_ms=20_000) for _ in range(sum(r.n_samples for r in sent))]
        assert finish(gen) == 0
    assert all(isinstance(r, Rollout) for r in got)
    by_group = {r.group_id: r for r in sent}
    assert sorted((r.group_id, r.sample_index) for r in got) == sorted(
        (r.group_id, k) for r in sent for k in range(r.n_samples)
    )
    for ro in got:
        req = by_group[ro.group_id]
        assert ro.item_id == req.item_id and ro.prompt_index == 4
        np.testing.assert_array_equal(ro.prompt_ids, req.prompt_ids)
        np.testing.assert_array_equal(ro.completion_ids, np.arange(4 + ro.sample_index) + req.prompt_ids.sum())
        assert ro.logprobs.dtype == np.float32 and ro.versions.tolist() == [3] * (4 + ro.sample_index)
        assert ro.verifier_info == {"answer": "42"} and ro.reward == ro.sample_index
    assert pull.n_rejected == 0


def bad_payloads(seed: int = 0, n: int = 300) -> list[list[bytes]]:
    """Malformed frames of every kind, each checked here to be refused by the receiver."""
    rng = random.Random(seed)
    good = encode(request("g"))
    body = msgpack.unpackb(good, raw=False)[2]
    fixed = [
        [msgpack.packb([PROTOCOL_VERSION + 1, "generation_request", body])],
        [msgpack.packb([0, "generation_request", body])],
        [msgpack.packb([PROTOCOL_VERSION, "no_such_type", body])],
        [msgpack.packb([PROTOCOL_VERSION, "generation_request", {**body, "n_samples": "3"}])],
        [msgpack.packb([PROTOCOL_VERSION, "generation_request", {**body, "prompt_ids": b"\0" * 5}])],
        [msgpack.packb([PROTOCOL_VERSION, "generation_request", {**body, "prompt_ids": [1, 2]}])],
        [encode(Shutdown(reason="wrong type for this socket"))],
        [good, good],  # multipart
        [b""],
        [msgpack.packb(msgpack.ExtType(1, b"x"))],
    ]
    out = list(fixed)
    while len(out) < n:
        data = corrupt(rng, good, rng.randrange(3), max_random=200)
        try:
            msg = decode(data)
        except ProtocolError:
            out.append([data])
            continue
        if not isinstance(msg, GenerationRequest):
            out.append([data])  # decodes, but the receiver only accepts requests
    return out


def test_live_receiver_survives_garbage(ipc_dir):
    addr = ipc_address("fuzz", ipc_dir)
    with PullEndpoint(ipc_address("report", ipc_dir), bind=True) as report:
        child = spawn(robust_receiver, addr, report.address)
        payloads = bad_payloads()
        ctx = zmq.Context.instance()
        raw = ctx.socket(zmq.PUSH)
        raw.linger = 0
        raw.connect(addr)
        try:
            for frames in payloads:
                raw.send_multipart(frames)
            raw.send(encode(request("final")))
            result = report.recv(timeout_ms=30_000)
        finally:
            raw.close()
        assert finish(child) == 0
    assert isinstance(result, Heartbeat)
    assert result.stats == {"n_rejected": len(payloads), "n_received": 1}


def test_handshake_loses_nothing_sent_at_startup():
    port = _free_port()
    addr = tcp_address(port)
    child = spawn(early_client, addr)
    time.sleep(1.0)  # the client has connected and sent before anyone listens
    with ControlServer(addr, heartbeat_interval=0.05) as server:
        assert server.wait_for_peers(1, timeout_s=20) == ["gen-0"]
        assert server.peers["gen-0"].version == 2 and server.peers["gen-0"].role == "generator"
        # The first message after the handshake reaches the peer.
        assert server.send("gen-0", Shutdown(reason="hello")) is True
        hello, first, second = (server.recv(timeout_ms=20_000) for _ in range(3))
        assert finish(child) == 0
    assert hello == ("gen-0", server.peers["gen-0"])  # joins are reported to the service too
    assert first == ("gen-0", Error(peer_id="gen-0", code="early", message="sent before the server bound"))
    assert second == ("gen-0", Error(peer_id="gen-0", code="ack", message="hello"))
    assert server.n_rejected == 0


def test_heartbeat_timeout_detects_killed_peer(ipc_dir):
    with ControlServer(ipc_address("ctl", ipc_dir), heartbeat_interval=0.05) as server:
        child = spawn(heartbeating_client, server.address)
        server.wait_for_peers(1, timeout_s=20)
        assert server.recv(timeout_ms=0)[1].peer_id == "gen-hb"  # its Ready
        end = time.monotonic() + 1.0
        while time.monotonic() < end:  # heartbeats keep it alive
            assert server.recv(timeout_ms=50) is None
            assert server.dead_peers(timeout_s=1.0) == []
        assert server.heartbeats["gen-hb"].seq > 5
        child.kill()
        child.join()
        killed = time.monotonic()
        while server.dead_peers(timeout_s=1.0) != ["gen-hb"]:
            server.recv(timeout_ms=50)
            assert time.monotonic() - killed < 3.0, "killed peer not noticed"
        # Nothing refreshes a dead peer. (Its last heartbeat may still have been queued when it was killed,
        # so compare against later polling, not against the moment of the kill.)
        seen = server.monitor.last_seen("gen-hb")
        server.recv(timeout_ms=300)
        assert server.monitor.last_seen("gen-hb") == seen


def test_client_notices_dead_server(ipc_dir):
    server = ControlServer(ipc_address("ctl", ipc_dir), heartbeat_interval=0.05)
    with ControlClient(server.address, peer_id="c", role="generator", heartbeat_interval=0.05) as client:
        server.wait_for_peers(1, timeout_s=5)
        for _ in range(5):
            server.recv(timeout_ms=20)
            client.recv(timeout_ms=20)
        assert client.server_alive(timeout_s=0.3)
        server.close()
        time.sleep(0.4)
        client.recv(timeout_ms=50)
        assert not client.server_alive(timeout_s=0.3)


def test_server_refuses_unannounced_and_spoofing_peers(ipc_dir):
    with ControlServer(ipc_address("ctl", ipc_dir)) as server:
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.linger = 0
        raw.setsockopt(zmq.ROUTING_ID, b"mallory")
        raw.connect(server.address)
        raw.send(encode(Error(peer_id="mallory", code="x", message="before Ready")))
        raw.send(encode(Ready(peer_id="alice", role="generator")))
        raw.send(b"\xc1garbage")
        raw.send(encode(Ready(peer_id="mallory", role="generator")))
        raw.send(encode(Error(peer_id="mallory", code="x", message="after Ready")))
        hello = server.recv(timeout_ms=5000)
        got = server.recv(timeout_ms=5000)
        raw.close()
    assert hello == ("mallory", Ready(peer_id="mallory", role="generator"))
    assert got == ("mallory", Error(peer_id="mallory", code="x", message="after Ready"))
    assert server.n_rejected == 3 and list(server.peers) == ["mallory"]
    assert server.send("nobody", Shutdown()) is False


def test_send_times_out_without_peer_and_close_is_prompt(ipc_dir):
    push = PushEndpoint(ipc_address("nobody", ipc_dir), bind=True)
    with pytest.raises(TimeoutError):
        push.send(request("g"), timeout_ms=50)
    t = time.monotonic()
    push.close()
    assert time.monotonic() - t < 0.5


def test_tcp_binds_loopback_unless_allowed():
    check_bind_address("tcp://127.0.0.1:5000")
    check_bind_address("tcp://localhost:5000")
    check_bind_address("tcp://[::1]:5000")
    check_bind_address("ipc:///tmp/x.sock")
    for addr in ("tcp://*:5000", "tcp://0.0.0.0:5000", "tcp://10.1.2.3:5000"):
        with pytest.raises(ValueError, match="not loopback"):
            check_bind_address(addr)
        check_bind_address(addr, allow_remote=True)
    with pytest.raises(ValueError, match="not loopback"):
        PullEndpoint("tcp://0.0.0.0:*", bind=True)


def test_peer_monitor():
    m = PeerMonitor(clock=lambda: 100.0)
    assert not m.is_alive("a", 5.0)
    m.seen("a", now=10.0)
    m.seen("b")  # the clock: 100
    assert m.last_seen("a") == 10.0
    assert m.is_alive("a", 5.0, now=15.0) and not m.is_alive("a", 5.0, now=15.5)
    assert m.dead(5.0) == ["a"] and m.dead(100.0) == []
    m.forget("a")
    assert m.peers == ["b"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
