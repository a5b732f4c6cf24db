"""Authenticated rollouts and control messages (shared/wire/auth.py), private ipc directories, and a run that a
forged or silent peer cannot stop: real sockets, and a real `scalerl train` for the end-to-end cases."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import zmq

from scalerl.shared.models.tiny_model import ensure_tiny_model
from scalerl.shared.wire import auth
from scalerl.shared.wire.codec import PROTOCOL_VERSION, decode, encode
from scalerl.shared.wire.messages import Error, Ready, Rollout
from scalerl.shared.wire.sockets import ControlClient, ControlServer, PullEndpoint, PushEndpoint, set_process_key

KEY = auth.key_from_secret("ab" * 32)


def rollout(group_id: str = "g1") -> Rollout:
    return Rollout(
        group_id=group_id,
        sample_index=0,
        prompt_ids=np.array([1, 2], dtype=np.int32),
        completion_ids=np.array([3], dtype=np.int32),
        logprobs=np.array([-0.5], dtype=np.float32),
        versions=np.array([0], dtype=np.int32),
        forced=np.array([0], dtype=np.uint8),
        finish_reason="stop",
        reward=1.0,
        t_queued=1.0,
        t_started=1.0,
        t_finished=1.0,
    )


def test_sign_and_verify():
    frames = [b"abc", b"def"]
    mac = auth.sign(KEY, frames, auth.ROLLOUT)
    assert auth.verify(KEY, frames, mac, auth.ROLLOUT)
    assert not auth.verify(KEY, frames, mac, auth.CONTROL)  # bound to its channel
    assert not auth.verify(KEY, [b"abcd", b"ef"], mac, auth.ROLLOUT)  # frame boundaries count
    assert not auth.verify(auth.key_from_secret("cd" * 32), frames, mac, auth.ROLLOUT)
    assert auth.split(KEY, [*frames, mac], auth.ROLLOUT) == (frames, True)
    assert auth.split(KEY, frames[:1], auth.ROLLOUT)[1] is False


def test_rollouts_without_the_runs_mac_are_dropped_and_counted(tmp_path: Path):
    address = f"ipc://{tmp_path}/rollout.sock"
    with PullEndpoint(address, bind=True, accept=(Rollout,), key=KEY) as pull:
        ctx = zmq.Context.instance()
        raw = ctx.socket(zmq.PUSH)
        raw.linger = 0
        raw.connect(address)
        payload = encode(rollout())
        try:
            raw.send(payload)  # no MAC
            raw.send_multipart([payload, b"\0" * 32])  # a wrong one
            raw.send_multipart([payload, auth.sign(auth.key_from_secret("x"), [payload], auth.ROLLOUT)])
            raw.send_multipart([payload, auth.sign(KEY, [payload], auth.CONTROL)])  # another channel's
            with PushEndpoint(address, bind=False, key=KEY) as good:  # open until read: linger is 0
                good.send(rollout("ok"))
                got = pull.recv(timeout_ms=5000)
        finally:
            raw.close(linger=0)
        assert got is not None and got.group_id == "ok"
        assert pull.recv(timeout_ms=300) is None  # the pipes are fair-queued: read what is left of the forgeries
        assert pull.n_unauthenticated == 4 and pull.n_rejected == 4


def test_a_control_client_signs_this_process_rollouts(tmp_path: Path):
    address = f"ipc://{tmp_path}/rollout.sock"
    set_process_key(None)
    try:
        with PullEndpoint(address, bind=True, accept=(Rollout,), key=KEY) as pull:
            with PushEndpoint(address, bind=False) as push:
                push.send(rollout("unsigned"))
                assert pull.recv(timeout_ms=300) is None and pull.n_unauthenticated == 1
                with ControlServer(f"ipc://{tmp_path}/control.sock", token="ab" * 32) as server:
                    with ControlClient(server.address, peer_id="gen-0", role="generator", token="ab" * 32):
                        push.send(rollout("signed"))
                        got = pull.recv(timeout_ms=5000)
                        assert got is not None and got.group_id == "signed"
    finally:
        set_process_key(None)


def test_control_messages_need_the_mac_and_a_bare_ready_is_told_why(tmp_path: Path):
    with ControlServer(f"ipc://{tmp_path}/control.sock", token="ab" * 32, heartbeat_interval=0.1) as server:
        ctx = zmq.Context.instance()
        bare = ctx.socket(zmq.DEALER)
        bare.setsockopt(zmq.ROUTING_ID, b"gen-7")
        bare.connect(server.address)
        try:
            # The right token, but no MAC: a peer that read the secret off the wire once cannot sign with it.
            bare.send(encode(Ready(peer_id="gen-7", role="generator", token="ab" * 32)))
            assert server.recv(timeout_ms=500) is None
            assert "gen-7" not in server.peers and server.n_unauthenticated == 1 and server.n_unauthorized == 1
            assert bare.poll(2000)
            frames = bare.recv_multipart()
            reply = decode(frames[0])
            assert isinstance(reply, Error) and reply.code == "unauthorized"
        finally:
            bare.close(linger=0)
        set_process_key(None)
        with ControlClient(server.address, peer_id="gen-0", role="generator", token="ab" * 32) as client:
            server.wait_for_peers(1, timeout_s=5)
            assert "gen-0" in server.peers
            deadline = time.monotonic() + 5
            while not client.server_alive(1.0):  # the server's signed heartbeats verify at the client
                assert time.monotonic() < deadline
                server.recv(timeout_ms=50)  # heartbeats go out while recv() is called, on both ends
                client.recv(timeout_ms=50)
        set_process_key(None)


@pytest.mark.parametrize("version", [1, 2])
def test_a_generator_of_an_older_protocol_version_is_refused_at_its_ready_naming_it(tmp_path: Path, version: int):
    # Version 1 sent requests unsigned: a version-1 generator with the secret registered (PROTOCOL_VERSION was still 1
    # after requests were signed), then refused every request ("expected 1 frame, got 2") until the run timed out.
    # Versions 1 and 2 sign control messages on the bare channel, not bound to the routing id (3): their MACs do not
    # verify, and the trainer must still name the version, not a wrong secret.
    import msgpack

    with ControlServer(f"ipc://{tmp_path}/control.sock", token="ab" * 32, heartbeat_interval=0.1) as server:
        old = zmq.Context.instance().socket(zmq.DEALER)
        old.setsockopt(zmq.ROUTING_ID, b"gen-1")
        old.connect(server.address)
        try:
            _, tag, fields = msgpack.unpackb(encode(Ready(peer_id="gen-1", role="generator", token="ab" * 32)))
            payload = msgpack.packb([version, tag, fields], use_bin_type=True)
            old.send_multipart([payload, auth.sign(KEY, [payload], auth.CONTROL)])
            assert server.recv(timeout_ms=500) is None
            assert "gen-1" not in server.peers and server.n_rejected == 1
            assert server.last_error.endswith(f"protocol version {version} not supported (expected {PROTOCOL_VERSION})")
        finally:
            old.close(linger=0)


def test_a_large_unsigned_control_message_is_refused_unread(tmp_path: Path):
    # Unsigned control messages were decoded whatever their size, to answer a bare Ready: a 47 MB map took 3 s of the
    # control lock each, and six of them from a process without the secret stopped a run's training for 16 s.
    with ControlServer(f"ipc://{tmp_path}/control.sock", token="ab" * 32, heartbeat_interval=0.1) as server:
        ctx = zmq.Context.instance()
        bare = ctx.socket(zmq.DEALER)
        bare.setsockopt(zmq.ROUTING_ID, b"gen-7")
        bare.connect(server.address)
        try:
            # over MAX_READY_BYTES (64 KiB), under the control socket's MAX_CONTROL_MESSAGE_BYTES (1 MiB)
            big = Ready(peer_id="gen-7", role="generator", info={"pad": "x" * (200 << 10)})
            bare.send(encode(big))
            assert server.recv(timeout_ms=500) is None
            assert server.n_unauthenticated == 1 and server.n_unauthorized == 0  # not decoded, so not answered
            assert not bare.poll(300)
            bare.send(encode(Ready(peer_id="gen-7", role="generator")))  # a small one is still told why
            assert server.recv(timeout_ms=500) is None and server.n_unauthorized == 1
            assert bare.poll(2000) and decode(bare.recv_multipart()[0]).code == "unauthorized"
        finally:
            bare.close(linger=0)


def test_a_large_two_frame_control_message_is_not_read(tmp_path: Path):
    # The control socket took frames up to 64 MiB like the data sockets: a two-frame message (which looks signed)
    # of 60 MB from a process without the secret was read and hashed in full before being refused. Its messages are
    # a few hundred bytes; zmq now disconnects a peer sending more than 1 MiB, and nothing of it is read.
    with ControlServer(f"ipc://{tmp_path}/control.sock", token="ab" * 32, heartbeat_interval=0.1) as server:
        evil = zmq.Context.instance().socket(zmq.DEALER)
        evil.setsockopt(zmq.ROUTING_ID, b"evil")
        evil.connect(server.address)
        try:
            evil.send_multipart([b"x" * (2 << 20), b"\0" * 32])
            assert server.recv(timeout_ms=500) is None
            assert server.n_unauthenticated == 0 and server.n_rejected == 0  # never read
        finally:
            evil.close(linger=0)
        set_process_key(None)
        big_ok = Ready(peer_id="gen-0", role="generator", info={f"k{i}": "v" * 100 for i in range(64)})
        assert len(encode(big_ok)) < 16 << 10  # the largest legitimate control message is far below the limit
        with ControlClient(server.address, peer_id="gen-0", role="generator", token="ab" * 32, info=big_ok.info):
            assert server.wait_for_peers(1, timeout_s=5) == ["gen-0"]
        set_process_key(None)


def test_a_deeply_nested_message_neither_kills_nor_floods_a_receiver(tmp_path: Path, caplog):
    # 1000 nested one-element arrays (1 KB) made decode() raise RecursionError out of recv(): on the control socket
    # even without the run's MAC (an unsigned Ready is decoded to answer it), so any local process stopped a run.
    deep = b"\x91" * 1000 + b"\x00"
    ctx = zmq.Context.instance()
    with ControlServer(f"ipc://{tmp_path}/control.sock", token="ab" * 32, heartbeat_interval=0.1) as server:
        evil = ctx.socket(zmq.DEALER)
        evil.setsockopt(zmq.ROUTING_ID, b"evil")
        evil.connect(server.address)
        try:
            evil.send(deep)  # unsigned
            evil.send_multipart([deep, auth.sign(KEY, [deep], auth.from_connection(auth.CONTROL, b"evil"))])  # signed
            with caplog.at_level("WARNING"):
                assert server.recv(timeout_ms=500) is None
        finally:
            evil.close(linger=0)
        assert server.n_rejected == 2
        assert all(len(r.getMessage()) < 500 and "\n" not in r.getMessage() for r in caplog.records)
        set_process_key(None)
        with ControlClient(server.address, peer_id="gen-0", role="generator", token="ab" * 32):
            assert server.wait_for_peers(1, timeout_s=5) == ["gen-0"]  # a well-formed peer is still served
        set_process_key(None)
    address = f"ipc://{tmp_path}/rollout.sock"
    with PullEndpoint(address, bind=True, accept=(Rollout,), key=KEY) as pull:
        with PushEndpoint(address, bind=False, key=KEY) as push:
            push._send_frames([deep], None)  # a holder of the secret with a broken encoder
            push.send(rollout("ok"))
            got = pull.recv(timeout_ms=5000)
        assert got is not None and got.group_id == "ok" and pull.n_rejected == 1
        assert "nested" in pull.last_error or "[[[[" in pull.last_error


def test_ipc_directories_are_private(tmp_path: Path):
    shared = tmp_path / "sockets"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with PullEndpoint(f"ipc://{shared}/x.sock", bind=True):
        assert stat.S_IMODE(shared.stat().st_mode) == 0o700
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    with pytest.raises(ValueError, match="shared directory"):
        PullEndpoint(f"ipc://{sticky}/x.sock", bind=True)
    assert stat.S_IMODE(sticky.stat().st_mode) == 0o1777
    if os.geteuid() == 0:
        other = tmp_path / "other"
        other.mkdir()
        os.chown(other, 65534, 65534)
        with pytest.raises(ValueError, match="belongs to uid 65534"):
            PullEndpoint(f"ipc://{other}/x.sock", bind=True)


# -- a real run ------------------------------------------------------------------------------------------------------


def scalerl(*args):
    return [sys.executable, "-m", "scalerl.cli", *map(str, args)]


def train_records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if '"train"' in line]


def wait_for_steps(run: Path, n: int, proc, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while len(train_records(run)) < n:
        assert time.time() < deadline, f"no {n} train steps after {timeout} s"
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.2)


def test_forged_rollouts_and_a_silent_fake_peer_do_not_stop_a_run(tmp_path: Path):
    import subprocess

    ensure_tiny_model()
    run = tmp_path / "run"
    sets = {
        "trainer.peer_timeout_s": 2.0,
        # Groups the trainer booked to the impostor come back by the dead-peer rule; any other loss is re-issued
        # after 10 s instead of the default 2 minutes (one CI run took 178 s here).
        "trainer.group_timeout_s": 10.0,
        "eval.prompts": 10,
        "eval.every": 50,
        "trainer.checkpoint_every": 50,
    }
    args = [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    proc = subprocess.Popen(
        scalerl("train", "--run-dir", run, "--max-steps", 16, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_steps(run, 1, proc)
        cfg = tomllib.loads((run / "config.toml").read_text())["wiring"]
        assert stat.S_IMODE(Path(cfg["rollout_addr"][len("ipc://") :]).parent.stat().st_mode) == 0o700
        secret = (run / ".secret").read_text().strip()
        ctx = zmq.Context.instance()
        forger = ctx.socket(zmq.PUSH)
        forger.linger = 0
        forger.connect(cfg["rollout_addr"])
        payload = encode(rollout("g0"))
        forger.send(payload)  # no MAC
        forger.send_multipart([payload, auth.sign(auth.key_from_secret("guess"), [payload], auth.ROLLOUT)])
        # A peer that knows the secret, registers as a generator and goes silent: dropped, never fatal.
        set_process_key(None)
        fake = ControlClient(cfg["control_addr"], peer_id="gen-fake", role="generator", token=secret)
        fake.recv(timeout_ms=500)
        fake.close()
        set_process_key(None)
        forger.close(linger=0)
        _, err = proc.communicate(timeout=300)  # the run takes about 20 s (CI's 307 s was the model build above)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    records = train_records(run)
    assert len(records) == 16
    log = (run / "logs" / "trainer.log").read_text()
    assert records[-1]["unauthenticated"] >= 2, log[-3000:]
    assert records[-1]["dead_generators"] == 1, log[-3000:]  # trained on after the fake peer was dropped
    assert "generator gen-fake stopped answering" in log and "dropped" in log
