"""A start of `scalerl train` that ends before its processes run leaves no new run dir behind: not when a stop comes
between RunLock's mkdir and its .lock, not when a refusal comes after the lock made the dir (a tcp port in use), and
not the bare .lock of a start killed earlier, which a later start would otherwise keep as an existing run. What it
takes out is only what it wrote: never a run that another start made in the dir while this one checked its inputs,
and a user's empty dir is left empty whether a stop or a refusal ends the start."""

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_a_refusal_leaves_no_folder_the_lock_made_above_a_new_run_dir(tmp_path):
    # The default run dir is runs/<time>: the lock makes runs/ too, which stayed behind, empty, after a refusal.
    (tmp_path / "kept").mkdir()
    refused_for_a_port_in_use(tmp_path / "kept" / "runs" / "a" / "run")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())


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


# `scalerl train` with hooks in cli/run_setup.py, around the part under test (train's clean-up). Hooks (comma
# separated): "race" has another start make the run dir, train in it and let go of its lock while this start checks
# its inputs (seconds, with a real task and tokenizer); "stop-at-prepare" delivers a real SIGTERM just after the lock;
# "stop-after-writes" / "refuse-after-writes" a SIGTERM / a refusal (a failed tiny-model build) once prepare_run_dir
# has written its files.
HOOKED = """
import json, os, signal, sys, time
from pathlib import Path
run, hooks, made = Path(sys.argv[1]), sys.argv[2].split(","), json.loads(sys.argv[3])
import scalerl.cli.run_setup as rs
from scalerl.shared.config import ConfigError

def stop(*_):
    os.kill(os.getpid(), signal.SIGTERM)
    while True:
        time.sleep(0.01)

real_check_inputs = rs.check_inputs
def check_inputs(cfg):
    real_check_inputs(cfg)
    if "race" in hooks:
        for name, text in made.items():
            (run / name).parent.mkdir(parents=True, exist_ok=True)
            (run / name).write_text(text)
rs.check_inputs = check_inputs
if "stop-at-prepare" in hooks:
    rs.prepare_run_dir = stop
def ensure_model(cfg):
    if "stop-after-writes" in hooks:
        stop()
    if "refuse-after-writes" in hooks:
        raise ConfigError("the tiny model could not be built")
rs.ensure_model = ensure_model
from scalerl.cli.main import main
main(["train", "--run-dir", str(run), "--max-steps", "1", *sys.argv[4:]])
"""

# A finished run, as another start leaves it (its .lock released).
ANOTHER_RUN = {
    "metrics.jsonl": '{"kind":"train","step":1,"gpu_hours":0.1,"time_s":1}\n',
    "config.toml": "# the other run's\n",
    ".secret": "the other run's secret\n",
    "status.json": '{"state":"finished","exit_code":0}\n',
    "checkpoints/step-1/weights": "precious",
    LOCK_NAME: "",
}


def hooked(run: Path, hooks: str, made: dict | None = None) -> subprocess.CompletedProcess:
    return train(str(run), hooks, json.dumps(made or {}), code=HOOKED)


def files(run: Path) -> dict[str, str]:
    """Every file under `run` and its text, but the .lock (whose owner record each start rewrites)."""
    return {str(p.relative_to(run)): p.read_text() for p in run.rglob("*") if p.is_file() and p.name != LOCK_NAME}


@pytest.mark.parametrize("stop", [False, True], ids=["refused", "stopped"])
def test_a_run_made_in_the_dir_while_the_start_checked_its_inputs_is_kept(tmp_path, stop):
    run = tmp_path / "run"
    r = hooked(run, "race,stop-at-prepare" if stop else "race", ANOTHER_RUN)
    last = r.stderr.strip().splitlines()[-1]
    if stop:  # nor is the other run's status.json replaced by this start's stop
        assert r.returncode == 128 + signal.SIGTERM and last.endswith(f"no process was started; {run} kept"), r.stderr
    else:
        assert r.returncode == 2 and "already holds a run" in last, r.stderr[-2000:]
    assert files(run) == {k: v for k, v in ANOTHER_RUN.items() if k != LOCK_NAME}


@pytest.mark.parametrize("hooks", ["stop-at-prepare", "stop-after-writes", "refuse-after-writes"])
def test_a_new_run_dir_is_removed_whatever_ends_the_start(tmp_path, hooks):
    run = tmp_path / "run"
    r = hooked(run, hooks)
    assert r.returncode == (2 if hooks.startswith("refuse") else 128 + signal.SIGTERM), r.stderr[-2000:]
    assert not run.exists(), r.stderr


def test_a_refusal_after_the_run_dir_is_written_leaves_a_users_empty_dir_empty(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    r = hooked(run, "refuse-after-writes")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines == ["scalerl: error: the tiny model could not be built"], r.stderr[-2000:]
    assert run.is_dir() and list(run.iterdir()) == [], "config.toml, .secret, .lock of the refused start left behind"


@pytest.mark.parametrize("hooks", ["stop-after-writes", "refuse-after-writes"])
def test_a_reused_run_dir_keeps_its_files_and_a_stop_is_recorded(tmp_path, hooks):
    run = tmp_path / "run"
    # A start that failed before its first evaluation left these: check_fresh lets a new run start here.
    mine = {"metrics.jsonl": "", ".secret": "mine\n", "notes.txt": "mine"}
    for name, text in mine.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)
    r = hooked(run, hooks)
    left = files(run)
    if hooks.startswith("stop"):  # the dir the user named answers `scalerl status` (docs/run-dir.md)
        assert r.returncode == 128 + signal.SIGTERM and "its status.json says so" in r.stderr, r.stderr[-2000:]
        assert json.loads(left.pop("status.json"))["exit_code"] == 128 + signal.SIGTERM
        assert "resolved by scalerl train" in left.pop("config.toml")
        assert "the settings this run was started with" in left.pop("settings.toml")  # for its --resume
    else:  # a refusal takes out the config.toml it wrote, and only that
        assert r.returncode == 2 and "status.json" not in left, r.stderr[-2000:]
    assert left == mine


def test_a_run_dir_that_cannot_be_listed_is_refused_in_one_line_also_by_dry_run(tmp_path):
    unlisted = tmp_path / ("a" * 300)  # ENAMETOOLONG; as root no mode bits make iterdir fail with EACCES
    assert holds_run(unlisted)  # what it holds is unknown: never removed
    for args in ([], ["--dry-run"]):
        r = train("--run-dir", str(unlisted), *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
        assert lines[0].endswith(f"{unlisted}: cannot use it as the run directory: File name too long"), lines
    (tmp_path / "file").write_text("")
    r = train("--run-dir", str(tmp_path / "file" / "run"), "--dry-run")
    assert r.returncode == 2 and r.stderr.strip().endswith("cannot use it as the run directory: Not a directory")
