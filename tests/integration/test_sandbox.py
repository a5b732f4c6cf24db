"""The code sandbox with real processes: a completion that forks, loops, allocates without bound, writes outside
its directory or uses the network gets reward 0, and nothing outside the sandbox is harmed or left running."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

from scalerl.shared.tasks import sandbox
from scalerl.shared.tasks.code_verifier import code_match, extract_code
from scalerl.shared.tasks.sandbox import (
    SANDBOX_UID_BASE,
    SANDBOX_UID_SLOTS,
    SandboxLimits,
    backend,
    isolation,
    risk_accepted,
    run_python,
)
from scalerl.shared.tasks.types import TaskError, TaskItem
from scalerl.shared.tasks.verifiers import make_verifier

FAST = SandboxLimits(timeout_s=2.0, cpu_s=2)
# No bwrap: the sandbox refuses, and the tests that need it to run assert that refusal instead
# (test_where_no_sandbox_works_nothing_runs).
REFUSED = backend() != "bwrap" and not risk_accepted()
ROOT = os.geteuid() == 0
pytestmark = pytest.mark.usefixtures("sandbox_alone")  # see the fixture in tests/conftest.py
needs_sandbox = pytest.mark.skipif(REFUSED, reason="no sandbox works here: the verifier refuses (asserted below)")


def survivors(workdir: str, grace_s: float = 2.0) -> list[int]:
    """Processes still running from a sandbox run: its interpreter has the run's directory as cwd, or (bwrap, as
    root) runs as a uid of the sandbox range. A pid namespace's processes die shortly after its init: allow
    `grace_s`."""
    deadline = time.monotonic() + grace_s
    while (found := _survivors(workdir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _survivors(workdir: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            uid = int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0])
            status = Path(f"/proc/{pid}/status").read_text()
            if "\nState:\tZ" in status:
                continue
            if os.readlink(f"/proc/{pid}/cwd").startswith(workdir) or (
                os.geteuid() == 0 and SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + SANDBOX_UID_SLOTS
            ):
                found.append(int(pid))
        except (OSError, IndexError):
            continue
    return found


@needs_sandbox
def test_a_correct_program_passes_and_a_failing_one_does_not():
    assert code_match("def f(x):\n    return 2 * x", "assert f(2) == 4")[0] == 1.0
    reward, details = code_match("def f(x):\n    return x + 1", "assert f(2) == 4")
    assert reward == 0.0 and details["error"] == "failed: f(2) == 4" and details["exit_code"] == 0
    assert code_match("   ", "assert True") == (0.0, {"correct": False, "has_answer": False, "parsed": ""})


@needs_sandbox
def test_fenced_code_is_what_runs():
    completion = "Here you go:\n```python\ndef f():\n    return 3\n```\nHope that helps."
    assert extract_code(completion) == "def f():\n    return 3\n"
    assert code_match(completion, "assert f() == 3")[0] == 1.0


@needs_sandbox
def test_code_verifier_by_name():
    verify = make_verifier("code")
    assert verify("def f(): return 7", TaskItem("c", "p", "assert f() == 7"))[0] == 1.0


@needs_sandbox
def test_infinite_loop_is_stopped_at_the_wall_clock_timeout():
    t0 = time.monotonic()
    r = run_python("while True:\n    pass\n", FAST)
    assert r.timed_out and not r.ok and time.monotonic() - t0 < FAST.timeout_s + 3
    assert survivors(r.workdir) == []
    assert code_match("while True: pass", "assert True", FAST)[1]["timed_out"] is True


@needs_sandbox
def test_fork_bomb_is_contained_and_every_process_killed():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    t0 = time.monotonic()
    r = run_python(bomb, FAST)
    assert not r.ok and time.monotonic() - t0 < FAST.timeout_s + 5
    assert survivors(r.workdir) == []
    # This process can still fork: the bomb did not exhaust the machine's processes.
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert code_match(bomb, "assert True", FAST)[0] == 0.0


@needs_sandbox
def test_a_child_that_leaves_the_process_group_is_killed_too():
    if "pid" not in isolation() and backend() != "bwrap":
        pytest.skip("no pid namespace here: a process that calls setsid() outlives the run (docs/tasks.md)")
    src = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
    r = run_python(src, FAST)
    time.sleep(0.2)
    assert survivors(r.workdir) == []


@needs_sandbox
def test_unbounded_allocation_hits_the_memory_limit():
    r = run_python("x = []\nwhile True:\n    x.append(bytearray(10**7))\n", SandboxLimits(memory_mb=256, timeout_s=20))
    assert not r.ok and not r.timed_out and "MemoryError" in r.stderr
    assert code_match("x = bytearray(10**11)", "assert True")[0] == 0.0


@needs_sandbox
def test_every_limit_is_in_force_inside_the_program():
    limits = SandboxLimits(cpu_s=3, memory_mb=300, file_size_mb=5, max_procs=12, open_files=100)
    names = ("CPU", "AS", "FSIZE", "CORE", "NOFILE", "NPROC")
    src = "import resource\nprint([resource.getrlimit(getattr(resource, 'RLIMIT_' + n)) for n in %r])\n" % (names,)
    r = run_python(src, limits)
    assert r.ok, r.stderr
    want = [3, 300 * 2**20, 5 * 2**20, 0, 100, 12]
    assert r.stdout.strip() == str([(v, v) for v in want]), r.stdout


@needs_sandbox
def test_the_parent_runs_no_python_between_fork_and_exec():
    # A preexec_fn ran Python in the forked child after setting RLIMIT_AS, below the address space of a parent with
    # torch loaded: now and then the child died of SIGSEGV before exec (3 code-verifier tests in one CI run under
    # pytest-xdist), and Python between fork and exec is unsafe in a threaded parent anyway. A child-side fork hook
    # runs only where a preexec_fn does (CPython calls PyOS_AfterFork_Child for it alone): here it would end every
    # run with exit 70 before bwrap starts.
    script = (
        "import os, threading\n"
        "from scalerl.shared.tasks.sandbox import SandboxLimits, run_python\n"
        "os.register_at_fork(after_in_child=lambda: os._exit(70))\n"
        "out = []\n"
        "t = threading.Thread(target=lambda: out.append(run_python('print(6 * 7)', SandboxLimits(timeout_s=10))))\n"
        "t.start(); t.join()\n"
        "r = out[0]\n"
        "assert r.ok and r.stdout == '42\\n' and r.returncode == 0, r\n"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


@needs_sandbox
def test_writing_outside_its_directory_is_refused(tmp_path: Path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    attempts = [
        f"open({str(victim)!r}, 'w').write('gone')",
        f"import os\nos.remove({str(victim)!r})",
        f"import os\nos.system('rm -f {victim}')",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
        f"import subprocess\nsubprocess.run(['rm', '-f', {str(victim)!r}])",
        f"open({str(tmp_path / 'new.txt')!r}, 'x').write('x')",
        "import os\nos.symlink('/etc/passwd', 'link')\nopen('link', 'a').write('x')",
    ]
    for src in attempts:
        assert code_match(src, "assert True", FAST)[0] == 0.0, src
    assert victim.read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["victim.txt"]
    # ... while its own directory is writable, up to the file-size limit.
    assert run_python("open('out.txt', 'w').write('x' * 1000)\nassert open('out.txt').read() == 'x' * 1000").ok
    big = run_python("open('big', 'wb').write(b'x' * 3 * 1024 * 1024)", SandboxLimits(file_size_mb=1))
    assert not big.ok


@needs_sandbox
def test_no_network():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        src = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'hi')\n"
        reward, details = code_match(src, "assert True", FAST)
        assert reward == 0.0 and details["exit_code"] != 0
        with pytest.raises(TimeoutError):
            server.accept()  # nothing ever connected


def test_as_root_the_accepted_risk_runs_nothing(monkeypatch):
    # Without bwrap the accepted-risk fallback ran the program as root: the run secret and every file readable and
    # writable. Model code never runs as root, so the variable lifts nothing there.
    if not ROOT:
        pytest.skip("as root only")
    monkeypatch.setenv("SCALERL_SANDBOX_ACCEPT_RISK", "1")
    r = run_python("print(open('/etc/shadow').read())", SandboxLimits(timeout_s=2.0, cpu_s=2, isolate=False))
    assert r.returncode is None and not r.ok and r.stdout == "" and "refused" in r.stderr, r


@pytest.mark.skipif(ROOT, reason="as root the accepted-risk fallback is refused (the test above)")
def test_without_namespaces_the_guard_still_refuses(monkeypatch):
    # The fallback on machines without bwrap or user namespaces, not root, the risk accepted: the audit hook and
    # seccomp.
    monkeypatch.setenv("SCALERL_SANDBOX_ACCEPT_RISK", "1")
    plain = SandboxLimits(timeout_s=2.0, cpu_s=2, isolate=False)
    r = run_python("import socket\nsocket.socket()", plain)
    assert not r.ok and ("not allowed" in r.stderr or "Operation not permitted" in r.stderr) and r.isolation == ()
    assert not run_python("open('/tmp/scalerl-sandbox-escape', 'w')", plain).ok
    assert not os.path.exists("/tmp/scalerl-sandbox-escape")
    assert run_python("print(sum(range(10)))", plain).stdout == "45\n"


@needs_sandbox
def test_a_completion_the_parent_cannot_encode_fails_inside():
    # A lone surrogate made writing main.py raise UnicodeEncodeError out of run_python: the item is a failed run.
    reward, details = code_match('x = "\ud800"\ndef f():\n    return 1', "assert f() == 1", FAST)
    assert reward == 0.0 and "UnicodeDecodeError" in details["error"], details


@pytest.mark.parametrize("userns", [False, True])
def test_not_root_without_bwrap_nothing_runs(tmp_path: Path, monkeypatch, userns: bool):
    # Not root, without bwrap, the program kept the caller's uid. Without user namespaces (a container's default
    # seccomp profile) it had rlimits, seccomp and the audit hook alone, and ctypes' open() (no audit event)
    # rewrote the caller's files; with them it saw the host's files read-only, the run secret (0600, the same uid)
    # among them. Now the verifier refuses at load and run_python starts nothing, whichever fallback was there.
    victim = tmp_path / "code.py"
    victim.write_text("original")
    monkeypatch.setenv("SCALERL_SANDBOX_BWRAP", "")
    monkeypatch.delenv("SCALERL_SANDBOX_ACCEPT_RISK", raising=False)
    monkeypatch.setattr(sandbox, "isolation", lambda: ("user", "net", "pid", "mount") if userns else ())
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 12345)
    # The two fallbacks the parameter stands for: the namespaces one was refused too, not only "nothing at all".
    assert backend() == ("namespaces" if userns else "none")
    with pytest.raises(TaskError, match="refusing to run model-written code as this user"):
        make_verifier("code")
    src = f"import ctypes, os\nfd = ctypes.CDLL(None).open({str(victim).encode()!r}, os.O_WRONLY | os.O_TRUNC)\n"
    src += "os.write(fd, b'rewritten')\nprint(open(__import__('sys').executable, 'rb').read(4))\ndef f():\n    return 1"
    r = run_python(src, FAST)
    assert r.returncode is None and "refused" in r.stderr and r.stdout == "", r
    assert code_match(src, "assert f() == 1", FAST)[0] == 0.0 and victim.read_text() == "original"


@pytest.mark.skipif(not REFUSED, reason="a sandbox works here")
def test_where_no_sandbox_works_nothing_runs():
    with pytest.raises(TaskError, match="refusing to run model-written code"):
        make_verifier("code")
    r = run_python("print(1)", FAST)
    assert r.returncode is None and not r.ok and "refused" in r.stderr


def test_an_installed_bwrap_that_cannot_run_is_named_not_asked_for(tmp_path: Path, monkeypatch):
    # bwrap installed and failing its probe (Docker's default seccomp profile refuses its namespaces): the refusal
    # told the user to install bubblewrap, which changes nothing. It says it cannot run here, in bwrap's words.
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create a new namespace' >&2\necho more >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("SCALERL_SANDBOX_BWRAP", str(fake))
    monkeypatch.delenv("SCALERL_SANDBOX_ACCEPT_RISK", raising=False)
    with pytest.raises(TaskError) as refused:
        make_verifier("code")
    message = str(refused.value)
    assert f"bubblewrap is installed ({fake}) but cannot run here: bwrap: No permissions to create" in message
    assert "apt-get install -y bubblewrap" not in message and "more" not in message and "\n" not in message
    r = run_python("print(1)", FAST)
    assert r.returncode is None and "refused: bubblewrap is installed" in r.stderr and "No permissions" in r.stderr


def test_an_answer_too_deep_to_parse_is_not_test_code():
    # compile_tests of `assert ----...1` raises MemoryError (or RecursionError) in the parser: answers_problem let it
    # out, and `scalerl train` / `eval` stopped with an internal error instead of "not test code" (exit 2).
    from scalerl.shared.tasks.verifiers import answers_problem

    problem = answers_problem("code", ["assert " + "-" * 200000 + "1"])
    assert problem is not None and "its answers are not test code" in problem, problem
    assert answers_problem("code", ["assert " + "-" * 200000 + "1", "assert f(1) == 2"]) is None


@needs_sandbox
def test_a_restrictive_umask_still_runs():
    # main.py and steps.txt are bound read-only into the tmpfs with the host file's mode, 0666 & ~umask: under
    # umask 077 the harness (the run's uid, as root) could not open them, every run failed, the bwrap probe too, and
    # the verifier refused "without bubblewrap".
    expected = backend()
    old = os.umask(0o077)
    try:
        sandbox._bwrap_failure.cache_clear()  # probed again under this umask
        assert backend() == expected
        r = run_python("print(6 * 7)", FAST)
        assert r.ok and r.stdout == "42\n", r
        assert code_match("def f(x):\n    return 2 * x", "assert f(2) == 4", FAST)[0] == 1.0
    finally:
        os.umask(old)
        sandbox._bwrap_failure.cache_clear()


@pytest.mark.parametrize("root", [True, False])
@pytest.mark.parametrize("work_mb", [64, None])
def test_nothing_but_the_working_directory_is_mounted_writable(root: bool, work_mb: int | None):
    # Not root, bwrap's tmpfs mounts (/, /dev, /dev/shm, /tmp) belong to the caller's uid: writable, and bounded by
    # nothing (half the RAM), past RLIMIT_FSIZE per file and work_mb. As root they are root's and the run's uid cannot
    # write them. Each is remounted read-only after the working directory's mount, for both users.
    workdir = "/tmp/scalerl-sandbox-test"
    args = sandbox._bwrap_argv("/usr/bin/bwrap", workdir, sys.executable, None, root, work_mb)
    pairs = list(zip(args, args[1:]))
    work_mount = pairs.index(("--tmpfs" if work_mb else "--bind", workdir))
    for path in ("/", "/dev", "/dev/shm", "/tmp"):
        assert ("--remount-ro", path) in pairs, (path, args)
        assert pairs.index(("--remount-ro", path)) > work_mount, (path, args)
    assert ("--remount-ro", workdir) not in pairs


@pytest.mark.skipif(ROOT, reason="as root the accepted-risk fallback is refused")
def test_without_bwrap_what_it_writes_is_left_nowhere(monkeypatch):
    # No bwrap, the risk accepted: the working directory is the host's, and a tree deeper than Python's recursion
    # made the parent's rmtree raise out of run_python, leaving it behind. Removed with `rm -rf` now. Runs where
    # bwrap is missing (test_sandbox_probes.py is skipped there).
    monkeypatch.setenv("SCALERL_SANDBOX_ACCEPT_RISK", "1")
    deep = "import os\nfor _ in range(1100):\n    os.mkdir('d')\n    os.chdir('d')\n"
    r = run_python(deep, SandboxLimits(timeout_s=10.0, cpu_s=10, isolate=False))
    assert r.ok and not os.path.exists(r.workdir), r.stderr


# ---------------------------------------------------------------- review fixes: a caller with many fds, a forged
# result the parent must not pay for (select -> poll; the harness's values as JSON, read with json.loads)


@needs_sandbox
def test_a_caller_holding_over_1024_fds_still_runs_and_scores():
    # A generator (vLLM, torch, zmq) holds more than 1024 fds, so the result pipe's fd was one of them, select()
    # raised ValueError ("filedescriptor out of range"), which run_python does not catch: every code sample scored 0.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1400
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    held: list[int] = []
    try:
        while len(held) < 1100:
            held.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        probe = os.pipe()
        os.close(probe[0])
        os.close(probe[1])
        assert min(probe) >= 1024, probe  # the sandbox's pipes are above select()'s range too
        r = run_python("print(6 * 7)", FAST)
        assert r.ok and r.stdout == "42\n", r
        reward, details = code_match("def f(x):\n    return 2 * x", "assert f(2) == 4", FAST)
        assert reward == 1.0, details
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# The nonce is the program's to read (its pipe is one of the program's fds): it writes a result of nearly
# RESULT_MAX with it. Read by ast.literal_eval that cost the generator ~2-5 s of CPU and ~550 MB per sample.
# (Its fds keep the parent's numbers, so they are looked up, not guessed.)
_STEAL_NONCE = (
    "import os\nfds = [int(n) for n in os.listdir('/proc/self/fd') if int(n) > 2]\nnonce = b''\nfor fd in fds:\n"
    "    try:\n        got = os.read(fd, 64)\n    except OSError:\n        continue\n    if len(got) == 32:\n"
    "        nonce = got\n"
)
_WRITE_FORGED = "for fd in fds:\n    try:\n        os.write(fd, forged)\n    except OSError:\n        pass\nos._exit(0)"


@needs_sandbox
@pytest.mark.parametrize(
    ("forged", "is_json"),
    [
        ("nonce + b'\\n[' + b'{},' * 349000 + b']'", False),  # a Python literal (a trailing comma), not JSON
        ("nonce + b'\\n[' + b'{},' * 349000 + b'{}]'", True),  # JSON: parsed, and still no reward
    ],
)
def test_a_forged_result_near_the_cap_is_cheap_for_the_parent_and_scores_zero(forged: str, is_json: bool):
    import tracemalloc

    assert len(eval(forged, {"nonce": b"0" * 32})) <= sandbox.RESULT_MAX  # read in full, not cut at the cap
    program = _STEAL_NONCE + f"forged = {forged}\n" + _WRITE_FORGED
    r = run_python(program, FAST)  # the nonce was stolen: the forged result is read and parsed
    assert r.completed is is_json and (len(r.values or []) == 349001) is is_json, (r.completed, r.stderr)
    tracemalloc.start()
    try:
        reward, details = code_match(program, "assert f(2) == 4", FAST)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reward == 0.0, details
    # The parent's allocations while it reads and parses the result (json.loads: ~25 MB; literal_eval: hundreds).
    assert peak < 100 * 2**20, f"{peak / 2**20:.0f} MB"
