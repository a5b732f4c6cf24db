"""Routing-id squatting: a local process without the run's secret connects first under the routing id a peer would
use. With ROUTER_HANDOVER off the ROUTER refused the real peer's connection under that id, so the trainer lost a
generator (control plane) or a generator never got weights (weight channel). Real zmq sockets throughout."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import zmq

from scalerl.shared.wire import auth
from scalerl.shared.wire.codec import decode, encode
from scalerl.shared.wire.messages import Error, Ready, Shutdown
from scalerl.shared.wire.sockets import ControlClient, ControlServer, set_process_key

SECRET = "ab" * 32
KEY = auth.key_from_secret(SECRET)
# What a squatter could guess: the bare peer id (the old scheme), and the new scheme's prefix with easy suffixes.
GUESSES = [b"gen-0", b"gen-0#", b"gen-0#0", b"gen-0#" + b"0" * 16, b"gen-0#" + b"f" * 16]


@pytest.fixture(autouse=True)
def _no_process_key():
    set_process_key(None)
    yield
    set_process_key(None)


def dealer(address: str, routing_id: bytes | None = None) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.connect(address)
    return sock


def settle(server: ControlServer, n_rejected: int) -> None:
    """Wait until the server has read (and refused) n_rejected messages: their connections are then registered."""
    deadline = time.monotonic() + 3
    while server.n_rejected < n_rejected:
        assert time.monotonic() < deadline, server.last_error
        assert server.recv(timeout_ms=20) is None


def exchange(server: ControlServer, client: ControlClient, peer: str = "gen-0") -> None:
    """A message each way between the server and the client that registered as `peer`."""
    assert server.send(peer, Shutdown(reason="ping"))
    got = client.recv(timeout_ms=2000)
    assert isinstance(got, Shutdown) and got.reason == "ping"
    client.send(Error(peer_id=peer, code="pong", message=""))
    got2 = server.recv(timeout_ms=2000)
    assert got2 is not None and got2[0] == peer and isinstance(got2[1], Error) and got2[1].code == "pong"


def test_a_squatter_on_the_generators_routing_id_does_not_block_it(tmp_path: Path):
    with ControlServer(f"ipc://{tmp_path}/control.sock", token=SECRET, heartbeat_interval=0.1) as server:
        squatters = [dealer(server.address, rid) for rid in GUESSES]
        try:
            for s in squatters:  # each connection is registered under its id before the generator connects
                s.send(b"junk")
            settle(server, len(squatters))
            with ControlClient(server.address, peer_id="gen-0", role="generator", token=SECRET) as client:
                assert server.wait_for_peers(1, timeout_s=3) == ["gen-0"]
                got = server.recv(timeout_ms=0)  # wait_for_peers kept the Ready for recv()
                assert got is not None and got[0] == "gen-0" and isinstance(got[1], Ready)
                exchange(server, client)
            assert all(not s.poll(0) for s in squatters)  # nothing meant for gen-0 went to a squatter
        finally:
            for s in squatters:
                s.close(linger=0)


def test_a_squatter_sending_an_unsigned_ready_changes_nothing(tmp_path: Path):
    with ControlServer(f"ipc://{tmp_path}/control.sock", token=SECRET, heartbeat_interval=0.1) as server:
        with ControlClient(server.address, peer_id="gen-0", role="generator", token=SECRET) as client:
            server.wait_for_peers(1, timeout_s=3)
            ready = server.peers["gen-0"]
            server.recv(timeout_ms=0)
            squatters = [dealer(server.address, rid) for rid in [*GUESSES, None]]
            try:
                for s in squatters:  # the right token in the body, but no MAC
                    s.send(encode(Ready(peer_id="gen-0", role="generator", token=SECRET, pid=1)))
                settle(server, len(squatters))
                assert server.n_unauthenticated == len(squatters)
                assert list(server.peers) == ["gen-0"] and server.peers["gen-0"] is ready
                exchange(server, client)
                for s in squatters:  # each is told why (its own connection), never sent gen-0's traffic
                    replies = []
                    while s.poll(200):
                        replies.append(decode(s.recv_multipart()[0]))
                    assert all(isinstance(r, Error) and r.code == "unauthorized" for r in replies), replies
            finally:
                for s in squatters:
                    s.close(linger=0)


def test_a_restarted_generator_takes_over_its_peer_id(tmp_path: Path):
    with ControlServer(f"ipc://{tmp_path}/control.sock", token=SECRET, heartbeat_interval=0.1) as server:
        old = ControlClient(server.address, peer_id="gen-0", role="generator", token=SECRET, info={"run": 1})
        try:
            server.wait_for_peers(1, timeout_s=3)
            assert server.recv(timeout_ms=0) == ("gen-0", server.peers["gen-0"])
            exchange(server, old)
            # The old process hangs with its socket open: its replacement still gets gen-0's traffic.
            with ControlClient(server.address, peer_id="gen-0", role="generator", token=SECRET, info={"run": 2}) as new:
                got = server.recv(timeout_ms=2000)  # a second Ready: the peer restarted
                assert got is not None and got[0] == "gen-0" and isinstance(got[1], Ready)
                assert got[1].info == {"run": 2} and server.peers["gen-0"].info == {"run": 2}
                exchange(server, new)
                # The old connection is forgotten: the server's heartbeats (every 0.1 s) no longer reach it.
                old.recv(timeout_ms=150)  # what was already on its way
                seen = old.monitor.last_seen(ControlClient.SERVER)
                assert old.recv(timeout_ms=400) is None
                assert old.monitor.last_seen(ControlClient.SERVER) == seen
                rejected = server.n_rejected
                old.send(Error(peer_id="gen-0", code="stale", message=""))
                settle(server, rejected + 1)
                assert list(server.peers) == ["gen-0"]
                exchange(server, new)
        finally:
            old.close()


def test_a_signed_ready_cannot_claim_another_connections_peer_id(tmp_path: Path):
    # Holders of the secret are trusted, but the identity check stays: a connection speaks for the peer id its
    # routing id names, and for no other.
    with ControlServer(f"ipc://{tmp_path}/control.sock", token=SECRET, heartbeat_interval=0.1) as server:
        with ControlClient(server.address, peer_id="gen-0", role="generator", token=SECRET) as client:
            server.wait_for_peers(1, timeout_s=3)
            server.recv(timeout_ms=0)
            other = dealer(server.address, b"gen-1#" + b"1" * 16)
            try:
                payload = encode(Ready(peer_id="gen-0", role="generator", token=SECRET))
                rid = b"gen-1#" + b"1" * 16
                other.send_multipart([payload, auth.sign(KEY, [payload], auth.from_connection(auth.CONTROL, rid))])
                settle(server, 1)
                assert "socket identity" in server.last_error and list(server.peers) == ["gen-0"]
                exchange(server, client)
            finally:
                other.close(linger=0)


def test_a_captured_signed_ready_replayed_from_another_connection_takes_no_route(tmp_path: Path):
    # A new connection's signed Ready replaces a peer's route (a restarted generator), so a Ready captured off the
    # wire and replayed from a connection of the replayer's own would divert a live peer's traffic. Its MAC is bound
    # to the routing id it was sent from (auth.from_connection): replayed from any other, it does not verify.
    tap = zmq.Context.instance().socket(zmq.ROUTER)
    tap.linger, tap.rcvtimeo = 0, 3000
    tap.bind(f"ipc://{tmp_path}/tap.sock")
    with ControlClient(tap.getsockopt_string(zmq.LAST_ENDPOINT), peer_id="gen-0", role="generator", token=SECRET):
        captured = tap.recv_multipart()[1:]  # the client's own signed Ready, as a sniffer would record it
    tap.close()
    assert isinstance(decode(captured[0]), Ready)
    with ControlServer(f"ipc://{tmp_path}/control.sock", token=SECRET, heartbeat_interval=0.1) as server:
        with ControlClient(server.address, peer_id="gen-0", role="generator", token=SECRET) as client:
            server.wait_for_peers(1, timeout_s=3)
            server.recv(timeout_ms=0)
            replayer = dealer(server.address, b"gen-0#" + b"2" * 16)
            try:
                replayer.send_multipart(captured)
                settle(server, 1)
                assert server.n_unauthenticated == 1 and list(server.peers) == ["gen-0"]
                exchange(server, client)
                # All the replayer gets is the refusal of its Ready, nothing meant for gen-0.
                got = []
                while replayer.poll(200):
                    got.append(decode(replayer.recv_multipart()[0]))
                assert [(type(m), m.code) for m in got] == [(Error, "unauthorized")]
            finally:
                replayer.close(linger=0)


def test_the_weight_channel_serves_a_receiver_despite_a_squatter(tmp_path: Path):
    torch = pytest.importorskip("torch")
    from scalerl.shared.wire.weights.zmq import ZmqWeightReceiver, ZmqWeightSender

    with ZmqWeightSender(f"ipc://{tmp_path}/w.sock", key=KEY) as sender:
        sender.publish({"w": torch.ones(3)}, version=1)
        squatters = [dealer(sender.address, rid) for rid in GUESSES]
        try:
            for s in squatters:
                s.send(b"junk")
            deadline = time.monotonic() + 3
            while sender.n_rejected < len(squatters):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with ZmqWeightReceiver(sender.address, peer_id="gen-0", key=KEY) as good:
                got = good.receive(timeout_s=3)
                assert got is not None and got[0] == 1
            assert all(not s.poll(0) for s in squatters)
        finally:
            for s in squatters:
                s.close(linger=0)


def test_a_restarted_weight_receiver_gets_the_version_its_old_connection_was_waiting_for(tmp_path: Path):
    # Without keep_latest a version goes out once, to the first receiver waiting: a restarted receiver comes back
    # under a new routing id, and its old one (still waiting, dead or hung) must not take the version instead.
    torch = pytest.importorskip("torch")
    from scalerl.shared.wire.weights.zmq import ZmqWeightReceiver, ZmqWeightSender

    with ZmqWeightSender(f"ipc://{tmp_path}/w.sock", key=KEY, keep_latest=False) as sender:
        with ZmqWeightReceiver(sender.address, peer_id="gen-0", key=KEY) as old:
            sender.wait_for_receivers(1, timeout_s=3)
            with ZmqWeightReceiver(sender.address, peer_id="gen-0", key=KEY) as new:
                deadline = time.monotonic() + 3
                while sender.n_ready < 2:  # both Readys are in before the version exists
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                sender.publish({"w": torch.ones(3)}, version=1)
                got = new.receive(timeout_s=3)
                assert got is not None and got[0] == 1
                assert old.receive(timeout_s=0.2) is None


def test_a_captured_weight_ready_replayed_from_another_connection_gets_no_weights(tmp_path: Path):
    # A weight receiver's Ready asks the trainer for the weights: replayed from the replayer's own connection it
    # would have them sent there. Bound to the receiver's routing id, it does not verify on any other.
    torch = pytest.importorskip("torch")
    from scalerl.shared.wire.weights.zmq import ZmqWeightReceiver, ZmqWeightSender

    tap = zmq.Context.instance().socket(zmq.ROUTER)
    tap.linger, tap.rcvtimeo = 0, 3000
    tap.bind(f"ipc://{tmp_path}/tap.sock")
    with ZmqWeightReceiver(tap.getsockopt_string(zmq.LAST_ENDPOINT), peer_id="gen-0", key=KEY):
        captured = tap.recv_multipart()[1:]
    tap.close()
    with ZmqWeightSender(f"ipc://{tmp_path}/w.sock", key=KEY) as sender:
        sender.publish({"w": torch.ones(3)}, version=1)
        replayer = dealer(sender.address, b"gen-0#" + b"3" * 16)
        try:
            replayer.send_multipart(captured)
            deadline = time.monotonic() + 3
            while sender.n_rejected < 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert not replayer.poll(300)
        finally:
            replayer.close(linger=0)
