"""A trainer of several ranks on one node (torchrun under `scalerl train`) listens on loopback only: torchrun's two
TCPStore servers listen on every interface whatever host they are given, and the ranks' gloo sockets on whatever
GLOO_SOCKET_IFNAME or the hostname names. Checked on real processes, by the listening sockets of the process tree."""

import fcntl
import ipaddress
import os
import socket
import struct
import subprocess
import time
from pathlib import Path

from scalerl.cli.device_plan import Placement
from scalerl.cli.launcher import LOOPBACK_FLAG, child_commands

RANK = """
import os, sys, time
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.ones(1)
dist.all_reduce(t)  # every pair connected: the ranks' gloo sockets are up
ready = os.path.join(sys.argv[1], f"ready-{dist.get_rank()}")  # a file each: two ranks' prints share one pipe
with open(ready + ".tmp", "w") as f:
    f.write(os.environ["MASTER_ADDR"])
os.replace(ready + ".tmp", ready)
done = os.path.join(sys.argv[1], "done")
deadline = time.monotonic() + 60
while not os.path.exists(done) and time.monotonic() < deadline:
    time.sleep(0.05)
dist.destroy_process_group()
"""


def trainer_argv(tmp_path, loopback: bool) -> list[str]:
    trainer = Placement("trainer", "trainer", 2, "local", (), ranks=2, gpu=False)
    [cmd] = child_commands(tmp_path / "config.toml", [trainer], False, False, loopback=loopback)
    return list(cmd.argv)


def test_the_torchrun_command_asks_for_loopback_unless_the_run_reaches_beyond_it(tmp_path):
    assert LOOPBACK_FLAG in trainer_argv(tmp_path, loopback=True)
    assert LOOPBACK_FLAG not in trainer_argv(tmp_path, loopback=False)


def ipv4_interface() -> str | None:
    """A non-loopback interface with an IPv4 address, as a cluster job's GLOO_SOCKET_IFNAME would name."""
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:
                continue
        if not ipaddress.ip_address(socket.inet_ntoa(raw[20:24])).is_loopback:
            return name
    return None


def tree(root: int) -> set[int]:
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = {root}, [root]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in parents.items() if pp == parent and p not in out]
        out.update(kids)
        todo += kids
    return out


def listening(pids: set[int]) -> list[str]:
    """host:port of every TCP socket in LISTEN state that one of `pids` holds."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            pass
    out = []
    for table, size in (("tcp", 4), ("tcp6", 16)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A" or f[9] not in inodes:  # 0A: LISTEN
                continue
            hexaddr, hexport = f[1].split(":")
            raw = b"".join(struct.pack("<I", int(hexaddr[i : i + 8], 16)) for i in range(0, len(hexaddr), 8))
            assert len(raw) == size
            out.append(f"{ipaddress.ip_address(raw)}:{int(hexport, 16)}")
    return out


def test_a_multi_rank_trainer_on_one_node_listens_on_loopback_only(tmp_path):
    script, done = tmp_path / "rank.py", tmp_path / "done"
    script.write_text(RANK)
    argv = trainer_argv(tmp_path, loopback=True)
    argv = argv[: argv.index("-m", 3)] + [str(script), str(tmp_path)]  # the real torchrun command, a stand-in rank
    env = dict(os.environ)
    interface = ipv4_interface()
    if interface is not None:  # as a cluster's job environment may set it: loopback still wins on one node
        env["GLOO_SOCKET_IFNAME"] = env["NCCL_SOCKET_IFNAME"] = interface
    log = tmp_path / "torchrun.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        ready = [tmp_path / "ready-0", tmp_path / "ready-1"]
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in ready) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(r.exists() for r in ready), log.read_text()[-3000:]
        assert {r.read_text() for r in ready} == {"127.0.0.1"}  # the MASTER_ADDR the ranks were given
        sockets = listening(tree(proc.pid))
        # two stores (rendezvous, shared with the ranks) and at least one gloo listener per rank
        assert len(sockets) >= 4, sockets
        assert [s for s in sockets if not ipaddress.ip_address(s.rsplit(":", 1)[0]).is_loopback] == [], sockets
        done.touch()
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        done.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
