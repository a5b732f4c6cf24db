import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"

# The built-in tiny models that `scalerl train` and `scalerl eval` use by default, built once per cache (a few
# minutes each on one CPU thread) by the first test that needs them.
PREBUILT_TASKS = ("addition", "addition_steps")
# A selection this large is a suite run, which needs those models for certain; a run of a few files may not.
PREBUILD_MIN_ITEMS = 200

_prebuild: subprocess.Popen | None = None


@pytest.hookimpl(trylast=True)  # after `-m` and `-k` deselect, so that the count is of what will run
def pytest_collection_modifyitems(session, config, items):
    """Unit tests first (cheap failures show first), and in a suite run the built-in models built in the background
    meanwhile.

    The first integration test that starts `scalerl train` otherwise waits minutes for the warm start while the other
    core idles, and under pytest-xdist both workers did (126 s each in one run). The build is `ensure_tiny_model`
    itself, in a child process: a test that needs the model before it is done waits on the build's lock file, as
    concurrent callers always do. Under xdist every worker collects the same items (the order must not differ between
    them) and only the first worker starts the build."""
    items.sort(key=lambda item: "integration" in item.path.parts)
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker not in (None, "gw0") or len(items) < PREBUILD_MIN_ITEMS:
        return
    if not any("integration" in item.path.parts for item in items):
        return
    global _prebuild
    # SIGTERM becomes SystemExit, so that an unfinished build (session over first) removes its temporary directory.
    code = (
        "import signal, sys\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))\n"
        "from scalerl.shared.models.tiny_model import ensure_tiny_model\n"
        f"for task in {PREBUILT_TASKS!r}:\n"
        "    ensure_tiny_model(task=task)\n"
    )
    _prebuild = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pytest_sessionfinish(session, exitstatus):
    if _prebuild is not None and _prebuild.poll() is None:
        _prebuild.terminate()
        try:
            _prebuild.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _prebuild.kill()


@pytest.fixture
def sandbox_alone():
    """Hold the host's sandbox runs to one test at a time across pytest-xdist workers. As root every run has a uid of
    one range, and test_sandbox.survivors() counts any process of that range: another worker's run counted as a
    survivor of this one."""
    import fcntl
    import tempfile

    with open(Path(tempfile.gettempdir(), "scalerl-tests-sandbox.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def peak_rss_mb(*args, timeout=120):
    """Run `scalerl ARGS` in a fresh parent whose only child it is, so RUSAGE_CHILDREN's peak is the command's.
    Returns (peak MB, its stdout, its stderr); the command must exit 0."""
    wrapper = (
        "import resource, subprocess, sys; "
        f"r = subprocess.run([sys.executable, '-m', 'scalerl.cli', *{[str(a) for a in args]!r}], capture_output=True, "
        "text=True); sys.stderr.write(r.stderr); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(r.returncode); print(r.stdout)"
    )
    r = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=timeout)
    peak_kb, rc, stdout = r.stdout.split("\n", 2)
    assert rc == "0", r.stderr
    return int(peak_kb) / 1024, stdout, r.stderr


@pytest.fixture
def data_dir() -> Path:
    return DATA


def run_cli(*args, cwd=None, timeout=120):
    """Run the installed `scalerl` command in a real subprocess, as a user or a slurm script would."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "scalerl.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=env,
    )


@pytest.fixture
def cli():
    return run_cli


def corrupt(rng, good: bytes, kind: int, max_random: int = 64) -> bytes:
    """A hostile variant of a valid payload: random bytes (kind 0), a truncation (1) or a few bit flips (2)."""
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, max_random)))
    if kind == 1:
        return good[: rng.randrange(len(good))]
    b = bytearray(good)
    for _ in range(rng.randrange(1, 4)):
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b)


def free_port() -> int:
    """A TCP port nobody listens on right now, so parallel or repeated runs never collide on a fixed one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leave_ranks() -> None:
    """End a spawned gloo rank once its work is done: a barrier, then os._exit(0).

    Tearing gloo down (destroy_process_group, or the C++ destructors at interpreter exit) while the other rank still
    works aborted a rank now and then under load ("terminate called without an active exception", SIGABRT; 3 of about
    1,500 test runs in CI). After the barrier nothing is left to say, so the rank skips every destructor. Rank 0 hosts
    the store and leaves last, after the others had time to read its last message."""
    import time

    import torch.distributed as dist

    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    if dist.get_rank() == 0:
        time.sleep(0.5)
    os._exit(0)


def tiny_qwen2(seed: int = 0):
    """A random-initialised 2-layer Qwen2 of a few thousand parameters (tied head): the trainer tests' model."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=64,
    )
    return Qwen2ForCausalLM(cfg)


@pytest.fixture
def tiny_moe_dir(tmp_path) -> Path:
    """The tiny random-initialised Qwen3-MoE (shared/models/tiny_moe.py, seed 0) saved as an HF model directory."""
    from scalerl.shared.models.tiny_moe import save_tiny_moe_dir

    return save_tiny_moe_dir(tmp_path / "tiny-moe", seed=0)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, theirs, ...); zombies are gone already, only not yet reaped."""
    rows = subprocess.run(["ps", "-eo", "pid,ppid,stat"], capture_output=True, text=True).stdout.splitlines()[1:]
    children: dict[int, list[int]] = {}
    for line in rows:
        p, pp, stat = line.split()[:3]
        if not stat.startswith("Z"):
            children.setdefault(int(pp), []).append(int(p))
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def catches(pid: int, sig: int) -> bool:
    """Whether the process has its own handler for `sig` yet (the SigCgt mask of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        mask = next(line.split()[1] for line in f if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (sig - 1) & 1)
