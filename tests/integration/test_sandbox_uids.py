"""RLIMIT_NPROC is counted per host uid: runs that shared one uid (as root every run was 65534) shared its
max_procs, and a fork bomb in one made another run's fork() fail, scored as a wrong answer. As root each run now
claims a uid of its own (sandbox._claim_uid); not root, the harness sets the limit inside bwrap's user namespace."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from scalerl.shared.tasks import sandbox
from scalerl.shared.tasks.sandbox import SandboxLimits, backend, run_python

pytestmark = pytest.mark.usefixtures("sandbox_alone")
ROOT = os.geteuid() == 0
root_only = pytest.mark.skipif(not ROOT, reason="uids are claimed as root only")

# Holds every process its limit allows until killed, retrying as a fork bomb does; named so the test sees it.
BOMB = """
import ctypes, os, time
ctypes.CDLL(None).prctl(15, b"scalerl-bomb", 0, 0, 0)
while True:
    try:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
    except OSError:
        time.sleep(0.01)
"""
FORKS = """
import os, time
pids = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        time.sleep(0.2)
        os._exit(0)
    pids.append(pid)
print(sorted(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids))
"""


def _bomb_pids() -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "scalerl-bomb":
                found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.skipif(backend() != "bwrap", reason="needs bwrap (without it the verifier refuses: test_sandbox.py)")
def test_a_fork_bomb_does_not_fail_a_concurrent_runs_fork():
    limits = SandboxLimits(timeout_s=20.0, cpu_s=20, max_procs=8)  # the same limits for both, as for a task's items
    bomb: list = []
    thread = threading.Thread(target=lambda: bomb.append(run_python(BOMB, limits)), daemon=True)
    thread.start()
    try:
        # The bomb holds all it may (max_procs, less bwrap's init where that shares its count) before the other runs.
        deadline = time.monotonic() + 15
        while len(_bomb_pids()) < limits.max_procs - 1:
            assert time.monotonic() < deadline and thread.is_alive(), f"the bomb never filled its limit: {bomb}"
            time.sleep(0.02)
        r = run_python(FORKS, SandboxLimits(timeout_s=10.0, cpu_s=10, max_procs=8))
        assert len(_bomb_pids()) >= limits.max_procs - 1  # still holding them while the other forked
        assert r.ok and r.stdout == "[0, 0, 0, 0]\n", (r.stdout, r.stderr)
    finally:
        while thread.is_alive():  # its processes are this test's; killed by pid
            for pid in _bomb_pids():
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            thread.join(0.1)
    assert bomb and not bomb[0].ok


@root_only
def test_concurrent_claims_get_distinct_uids():
    # Two other processes hold a uid each while eight threads of this one claim at the same moment.
    code = "import sys\nfrom scalerl.shared.tasks.sandbox import _claim_uid\nprint(_claim_uid()[0], flush=True)\n"
    others = [
        subprocess.Popen(
            [sys.executable, "-c", code + "sys.stdin.read()\n"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    claims: list[tuple[int, int]] = []
    try:
        held = [int(p.stdout.readline()) for p in others]  # type: ignore[union-attr]
        barrier = threading.Barrier(8)

        def claim() -> None:
            barrier.wait()
            claims.append(sandbox._claim_uid())

        threads = [threading.Thread(target=claim) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        uids = held + [uid for uid, _ in claims]
        assert len(uids) == 10 and len(set(uids)) == 10, uids
        end = sandbox.SANDBOX_UID_BASE + sandbox.SANDBOX_UID_SLOTS
        assert all(sandbox.SANDBOX_UID_BASE <= uid < end for uid in uids), uids
    finally:
        for _, fd in claims:
            os.close(fd)
        for p in others:
            p.communicate("")


@root_only
def test_a_uid_with_an_account_or_a_process_is_skipped(monkeypatch):
    base = sandbox.SANDBOX_UID_BASE
    real = sandbox.pwd.getpwuid

    def getpwuid(uid: int):
        return real(0) if base <= uid < base + 3 else real(uid)

    monkeypatch.setattr(sandbox.pwd, "getpwuid", getpwuid)  # accounts hold the first three
    victim = subprocess.Popen(["sleep", "30"], preexec_fn=lambda: (os.setgid(base + 3), os.setuid(base + 3)))
    try:
        uid, fd = sandbox._claim_uid()
        os.close(fd)
        assert uid >= base + 4, uid
    finally:
        victim.kill()
        victim.wait()


@root_only
def test_without_a_free_uid_nothing_runs(monkeypatch, tmp_path: Path):
    # Fail closed: the one slot of the range is held, or the lock directory is not root's alone.
    monkeypatch.setattr(sandbox, "SANDBOX_UID_BASE", sandbox.SANDBOX_UID_BASE + sandbox.SANDBOX_UID_SLOTS - 1)
    monkeypatch.setattr(sandbox, "SANDBOX_UID_SLOTS", 1)
    _, fd = sandbox._claim_uid()
    try:
        r = run_python("print(1)", SandboxLimits(timeout_s=5.0))
        assert not r.ok and r.returncode is None and "no free sandbox uid" in r.stderr, r
    finally:
        os.close(fd)
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o777)
    locks.chmod(0o777)
    monkeypatch.setattr(sandbox, "UID_LOCK_DIR", str(locks))
    with pytest.raises(OSError, match="root's and writable by root only"):
        sandbox._claim_uid()
