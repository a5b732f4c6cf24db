"""A start of `scalerl train` that ends before its processes run leaves no new run dir behind: not when a stop comes
between RunLock's mkdir and its .lock, not when a refusal comes after the lock made the dir (a tcp port in use), and
not the bare .lock of a start killed earlier, which a later start would otherwise keep as an existing run."""

import signal
import socket
import subprocess
import sys

from scalerl.shared.ownership import LOCK_NAME
from scalerl.shared.run_dir import holds_run

# Delivers a real SIGTERM to `scalerl train` in the one window a handler can see between the new run dir's mkdir
# and the open of its .lock; the sleep lets the pending signal's handler raise there.
STOP_BEFORE_LOCK = """
import os, signal, sys, time
run = sys.argv[1]
real_open = os.open
def open_(path, *args, **kwargs):
    if str(path) == os.path.join(run, ".lock"):
        os.kill(os.getpid(), signal.SIGTERM)
        while True:
            time.sleep(0.01)
    return real_open(path, *args, **kwargs)
os.open = open_
from scalerl.cli.main import main
main(["train", "--run-dir", run, "--max-steps", "1"])
"""


def train(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    head = ["-c", code] if code else ["-m", "scalerl.cli", "train", "--max-steps", "1"]
    return subprocess.run([sys.executable, *head, *args], capture_output=True, text=True, timeout=120)


def refused_for_a_port_in_use(run) -> subprocess.CompletedProcess:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = train("--run-dir", str(run), "--set", "run.transport='tcp'", "--set", f"run.base_port={port}")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and f"port {port}" in lines[0] and "not free" in lines[0], r.stderr
    return r


def test_a_stop_between_the_mkdir_and_the_lock_leaves_no_run_dir(tmp_path):
    run = tmp_path / "run"
    r = train(str(run), code=STOP_BEFORE_LOCK)
    assert r.returncode == 128 + signal.SIGTERM, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].endswith(f"no process was started; no run dir left at {run}"), r.stderr
    assert not run.exists()


def test_a_stop_there_keeps_an_empty_dir_the_user_made(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    r = train(str(run), code=STOP_BEFORE_LOCK)
    assert r.returncode == 128 + signal.SIGTERM and f"{run} kept" in r.stderr, r.stderr[-2000:]
    assert run.is_dir()


def test_a_refusal_after_the_lock_leaves_no_run_dir(tmp_path):
    run = tmp_path / "run"
    refused_for_a_port_in_use(run)
    assert not run.exists()


def test_a_bare_lock_left_by_a_killed_start_is_no_run_to_keep(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text('{"pid": 1, "host": "gone", "role": "scalerl train"}\n')
    assert not holds_run(run)
    refused_for_a_port_in_use(run)
    assert not run.exists()


def test_a_refusal_keeps_a_dir_that_holds_anything(tmp_path):
    empty, used = tmp_path / "empty", tmp_path / "used"
    empty.mkdir()
    used.mkdir()
    (used / LOCK_NAME).write_text("")
    (used / "notes.txt").write_text("mine")
    assert holds_run(empty) and holds_run(used) and not holds_run(tmp_path / "none")
    for run in (empty, used):
        refused_for_a_port_in_use(run)
    assert list(empty.iterdir()) == [], "the refused start's .lock would make it look like a killed start's"
    assert (used / "notes.txt").read_text() == "mine" and (used / LOCK_NAME).exists()
