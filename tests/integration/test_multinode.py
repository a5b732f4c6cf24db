"""Two nodes in network namespaces joined by a veth pair: `srun scalerl train` across them, where the trainer
node's own name resolves to 127.0.1.1 there (Debian's /etc/hosts default) and to its real address on the other
node. The trainer must bind an interface the other node reaches, not the loopback alias.

Needs root and iproute2 (`ip netns`), as CI has; skipped elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scalerl.shared.wire.addresses import bind_addresses
from tests.integration.test_slurm import free_base_port, run_step

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root and iproute2"
)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def two_nodes():
    """Namespaces A (10.77.0.1) and B (10.77.0.2); each resolves its own name to 127.0.1.1."""
    tag = f"srl{os.getpid() % 100000}"
    a, b = f"{tag}a", f"{tag}b"
    hosts = {
        a: "127.0.0.1 localhost\n127.0.1.1 nodea\n10.77.0.2 nodeb\n",
        b: "127.0.0.1 localhost\n10.77.0.1 nodea\n127.0.1.1 nodeb\n",
    }
    try:
        for ns in (a, b):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts[ns])  # `ip netns exec` mounts it over /etc/hosts
        ip("link", "add", f"{tag}va", "type", "veth", "peer", "name", f"{tag}vb")
        for ns, dev, addr in ((a, f"{tag}va", "10.77.0.1/24"), (b, f"{tag}vb", "10.77.0.2/24")):
            ip("link", "set", dev, "netns", ns)
            ip("-n", ns, "addr", "add", addr, "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def test_a_name_that_resolves_to_a_loopback_alias_binds_the_routable_interface_too(two_nodes):
    a, _ = two_nodes
    code = "from scalerl.shared.wire.addresses import bind_addresses; print(bind_addresses('tcp://nodea:7000'))"
    out = subprocess.run(in_ns(a, sys.executable, "-c", code), capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['tcp://10.77.0.1:7000', 'tcp://127.0.1.1:7000']"
    assert bind_addresses("tcp://localhost:7000") == ["tcp://localhost:7000"]  # loopback stays loopback
    assert bind_addresses("tcp://*:7000") == ["tcp://*:7000"]  # all interfaces only when the config says so


def test_srun_across_two_namespaces_trains(two_nodes, tmp_path):
    from scalerl.shared.models.tiny_model import ensure_tiny_model

    ensure_tiny_model()
    a, b = two_nodes
    run = tmp_path / "run"
    sets = {
        "eval.every": 2,
        "eval.prompts": 20,
        "trainer.prompts_per_step": 8,
        "trainer.startup_timeout_s": 90,  # a peer that cannot connect fails the run instead of hanging it
        "generator.startup_timeout_s": 90,
        "run.base_port": free_base_port(),
    }
    argv = [sys.executable, "-m", "scalerl.cli", "train", "--run-dir", str(run), "--max-steps", "4"]
    argv += [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    env = dict(os.environ, PYTHONUNBUFFERED="1", SLURM_NTASKS="2", SLURM_JOB_NODELIST="nodea,nodeb")
    env.update(SLURM_STEP_NUM_TASKS="2")
    env.update(SLURM_TASKS_PER_NODE="1(x2)", SLURM_JOB_ID="4243")
    tasks = [
        (in_ns(ns, *argv), dict(env, SLURM_PROCID=str(i), SLURM_NODEID=str(i), SLURM_LOCALID="0"))
        for i, ns in enumerate((a, b))
    ]
    run_step(tasks, timeout=400)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in records if x["kind"] == "train"] == [1, 2, 3, 4]
    assert 'host = "nodea"' in (run / "config.toml").read_text()
