"""generator.peer_id becomes each of its sockets' zmq routing id with 17 bytes more (shared/wire/sockets.py
routing_id), and zmq refuses one over 255 bytes only when the socket is made, in a started process (ZMQError
EINVAL). The config check refuses a peer id over MAX_PEER_ID_BYTES first: one line naming the key, exit 2."""

import subprocess
import sys

import pytest
import zmq

from scalerl.generator_service.config import MAX_PEER_ID_BYTES, GeneratorConfig
from scalerl.shared.config import ConfigError, load_section
from scalerl.shared.wire.sockets import routing_id


def generator(peer_id: str) -> GeneratorConfig:
    return load_section(None, "generator", GeneratorConfig, [f"generator.peer_id={peer_id!r}"])


@pytest.mark.parametrize("peer_id", ["g" * (MAX_PEER_ID_BYTES + 1), "g" * 239, "é" * (MAX_PEER_ID_BYTES // 2 + 1)])
def test_a_peer_id_too_long_for_a_routing_id_is_refused_naming_the_key(peer_id):
    with pytest.raises(ConfigError) as e:
        generator(peer_id)
    n = len(peer_id.encode())
    assert str(e.value) == (
        f"generator: peer_id must be at most {MAX_PEER_ID_BYTES} bytes of UTF-8 (a zmq routing id), not {n}"
    )


def test_the_longest_peer_id_is_one_zmq_takes_as_a_routing_id():
    peer_id = "é" * (MAX_PEER_ID_BYTES // 2)  # counted in bytes, not characters
    assert generator(peer_id).peer_id == peer_id
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.ROUTING_ID, routing_id(peer_id))
        with pytest.raises(zmq.ZMQError):  # what the check is there for: 239 bytes + 17 > 255
            sock.setsockopt(zmq.ROUTING_ID, routing_id("g" * 239))
    finally:
        sock.close(linger=0)
        ctx.term()


def test_scalerl_generator_refuses_it_in_one_line_with_exit_2_before_it_starts():
    long_id = "g" * 240
    r = subprocess.run(
        [sys.executable, "-m", "scalerl.cli", "generator", "--set", f"generator.peer_id={long_id!r}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0] == (
        f"scalerl: error: generator: peer_id must be at most {MAX_PEER_ID_BYTES} bytes of UTF-8 (a zmq routing id), "
        "not 240"
    )
