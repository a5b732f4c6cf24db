"""A generator busy verifying still heartbeats. Verification runs on the generator's loop (GeneratorService._ship),
one completion after another, and a code sample can take its sandbox's whole timeout (5 s): heartbeats went out only
from the control socket's recv(), so with many slow samples in one engine step the trainer heard nothing for longer
than peer_timeout_s and dropped the generator. Real ControlServer / ControlClient sockets on loopback TCP."""

from __future__ import annotations

import collections
import time
import types

import pytest
import zmq

from scalerl.generator_service import service
from scalerl.shared.wire.sockets import ControlClient, ControlServer, tcp_address

INTERVAL = 0.1  # the generator's heartbeat_s here


@pytest.fixture
def control():
    ctx = zmq.Context()
    server = ControlServer(tcp_address(), heartbeat_interval=60.0, context=ctx)
    client = ControlClient(server.address, peer_id="gen-0", role="generator", heartbeat_interval=INTERVAL, context=ctx)
    try:
        server.wait_for_peers(1, timeout_s=20)
        yield server, client
    finally:
        client.close()
        server.close()
        ctx.term()


def heard(server: ControlServer, ms: int = 300):
    """The latest Heartbeat the server has from gen-0 after reading what arrived within `ms`."""
    while server.recv(timeout_ms=ms) is not None:
        pass
    return server.heartbeats.get("gen-0")


def test_heartbeat_if_due_sends_only_once_due(control):
    server, client = control
    assert heard(server, ms=50) is None  # the client sends heartbeats only when asked (recv, heartbeat_if_due)
    time.sleep(INTERVAL * 1.5)
    assert client.heartbeat_if_due() == pytest.approx(INTERVAL)  # sent just now: the next is an interval away
    assert 0 < client.heartbeat_if_due() < INTERVAL  # not due again yet: nothing sent
    hb = heard(server)
    assert hb is not None and hb.seq == 0 and hb.peer_id == "gen-0"


def test_ship_lets_heartbeats_out_between_slow_verifications(control, monkeypatch):
    server, client = control
    n, slow_s = 4, INTERVAL * 1.5  # each verification outlasts the heartbeat interval

    def slow_verifier(text, item):
        time.sleep(slow_s)
        return 1.0, {}

    # Only what _ship touches: the control client, the tokenizer, in-flight groups, the outbox.
    svc = service.GeneratorService.__new__(service.GeneratorService)
    svc.control = client
    svc.tokenizer = types.SimpleNamespace(decode=lambda ids, skip_special_tokens: "completion")
    svc.outbox = collections.deque()
    group = types.SimpleNamespace(verifier=slow_verifier, item=None)
    svc.in_flight = {f"r{k}": (group, k) for k in range(n)}
    monkeypatch.setattr(service, "build_rollout", lambda group, k, c, reward, details: (k, reward))
    done = [types.SimpleNamespace(request_id=f"r{k}", token_ids=types.SimpleNamespace(tolist=list)) for k in range(n)]

    t0 = time.time()
    svc._ship(done)
    assert list(svc.outbox) == [(k, 1.0) for k in range(n)]
    hb = heard(server)
    # One heartbeat after each verification (each took longer than the interval), the last after the last one.
    assert hb is not None, "no heartbeat while the generator verified"
    assert hb.seq == n - 1 and hb.sent_at >= t0 + n * slow_s - 0.01, (hb.seq, hb.sent_at - t0)
