"""The probes of issue 23, written as a policy under RL pressure would write them, against the real sandbox (bwrap,
a uid of its own, seccomp) as CI runs it: as root. Each must be blocked, and each reward fake must score 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from scalerl.shared.tasks import sandbox
from scalerl.shared.tasks.code_verifier import code_match, compile_tests
from scalerl.shared.tasks.sandbox import SANDBOX_UID_BASE, SandboxLimits, backend, run_python

FAST = SandboxLimits(timeout_s=3.0, cpu_s=3)
ROOT = os.geteuid() == 0

pytestmark = [
    pytest.mark.skipif(
        backend() != "bwrap", reason="without bwrap the code verifier refuses to run (test_sandbox.py asserts it)"
    ),
    pytest.mark.usefixtures("sandbox_alone"),
]

# Switches the audit hook off where it can (the one-liners), so that the probes below test the kernel.
UNHOOK = """
import sys, gc
try:
    sys.modules['__main__'].BLOCKED = ()
except Exception:
    pass
try:
    for o in gc.get_objects():
        if callable(o) and getattr(o, '__name__', '') == 'guard':
            o.__code__ = (lambda event, args: None).__code__
except Exception:
    pass
"""


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    path = run / ".secret"
    path.write_text("s3cr3t-token-value\n")
    path.chmod(0o600)
    return path


def test_a_0600_root_owned_secret_and_etc_shadow_are_not_readable(secret: Path):
    src = (
        UNHOOK
        + f"""
import os
for p in ({str(secret)!r}, '/etc/shadow', '/proc/1/environ'):
    try:
        print(open(p).read())
    except Exception as e:
        print('blocked', type(e).__name__)
    try:
        fd = os.open(p, os.O_RDONLY)
        print(os.read(fd, 100))
    except Exception as e:
        print('blocked', type(e).__name__)
"""
    )
    r = run_python(src, FAST)
    assert r.ok, r.stderr
    assert "s3cr3t" not in r.stdout and "root:" not in r.stdout and r.stdout.count("blocked") == 6


def test_other_processes_are_not_visible_in_proc():
    # A uid of the sandbox range (another run's; this run skips it, as it runs): nothing but the pid ns hides it.
    victim = _victim(SANDBOX_UID_BASE if ROOT else None, "31.4159")
    try:
        src = (
            UNHOOK
            + """
import os
seen = []
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        seen.append(open(f'/proc/{pid}/cmdline').read())
    except OSError:
        pass
print('pids', len(seen), 'victim', any('31.4159' in c for c in seen), 'pytest', any('pytest' in c for c in seen))
"""
        )
        r = run_python(src, FAST)
        assert r.ok, r.stderr
        assert "victim False pytest False" in r.stdout, r.stdout
    finally:
        victim.kill()
        victim.wait()


def test_writes_outside_through_dir_fd_are_refused(tmp_path: Path):
    tmp_path.chmod(0o777)  # even a world-writable directory
    shm = Path("/dev/shm")
    name = f"scalerl-probe-{os.getpid()}"
    src = (
        UNHOOK
        + f"""
import os
for d in ('/dev/shm', {str(tmp_path)!r}, '/tmp', '/'):
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        os.close(os.open({name!r}, os.O_WRONLY | os.O_CREAT, 0o666, dir_fd=fd))
        print('wrote', d)
    except OSError as e:
        print('blocked', d, type(e).__name__)
"""
    )
    r = run_python(src, FAST)
    assert r.ok, r.stderr
    assert not (shm / name).exists() and not (tmp_path / name).exists() and not Path("/tmp", name).exists()
    assert not Path("/", name).exists()


def test_no_loopback_tcp_even_with_the_hook_off():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        src = UNHOOK + f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))\n"
        assert not run_python(src, FAST).ok
        with pytest.raises(TimeoutError):
            server.accept()


def test_no_unix_socket_by_path(tmp_path: Path):
    tmp_path.chmod(0o777)
    path = str(tmp_path / "ctl.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        os.chmod(path, 0o777)
        server.listen()
        server.settimeout(0.5)
        src = UNHOOK + f"import _socket\ns = _socket.socket(_socket.AF_UNIX)\ns.connect({path!r})\n"
        r = run_python(src, FAST)
        assert not r.ok
        with pytest.raises(TimeoutError):
            server.accept()
    # socketpair(AF_UNIX) stays (multiprocessing needs it).
    assert run_python("import socket\na, b = socket.socketpair()\na.send(b'x')\nassert b.recv(1) == b'x'").ok


def _victim(uid: int | None, seconds: str = "30") -> subprocess.Popen:
    def drop() -> None:
        if uid is not None:
            os.setgid(uid)
            os.setuid(uid)

    return subprocess.Popen(["sleep", seconds], preexec_fn=drop if uid is not None else None)


@pytest.mark.parametrize("uid", [None, SANDBOX_UID_BASE] if ROOT else [None])
def test_kill_and_ptrace_of_a_foreign_pid_are_refused(uid: int | None):
    victim = _victim(uid)  # SANDBOX_UID_BASE: a uid of the sandbox range (another run's), outside it
    try:
        src = (
            UNHOOK
            + f"""
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
pid = {victim.pid}
print('kill', libc.kill(pid, 9), ctypes.get_errno())
print('kill-1', libc.kill(-1, 9), ctypes.get_errno())
print('pidfd', libc.syscall(434, pid, 0), ctypes.get_errno())
print('ptrace', libc.ptrace(16, pid, 0, 0), ctypes.get_errno())
try:
    os.kill(pid, signal.SIGKILL)
except OSError as e:
    print('os.kill', type(e).__name__)
"""
        )
        r = run_python(src, FAST)
        time.sleep(0.2)
        assert victim.poll() is None, r.stdout  # still running
    finally:
        victim.kill()
        victim.wait()


def test_fork_exec_runs_no_shell():
    # fork_exec raises no audit event and ctypes' system() none the hook refuses: only seccomp stands here.
    src = (
        UNHOOK
        + """
import _posixsubprocess, ctypes, os
try:
    r, w = os.pipe()
    pid = _posixsubprocess.fork_exec([b'/bin/sh', b'-c', b'echo pwned-1'], [b'/bin/sh'], True, (), None, None,
                                     -1, -1, -1, -1, -1, -1, r, w, True, False, 0, None, None, None, -1, None, False)
    os.close(w)
    print('exec error report', os.read(r, 200))
    os.waitpid(pid, 0)
except Exception as e:
    print('blocked', type(e).__name__, e)
print('system', ctypes.CDLL(None).system(b'echo pwned-2'))
"""
    )
    r = run_python(src, FAST)
    assert r.ok, r.stderr
    assert "pwned" not in r.stdout and "system 32512" in r.stdout, r.stdout  # 127 << 8: the shell never ran


def test_the_hook_off_changes_nothing_that_matters(secret: Path):
    # The one-liners, then everything the hook used to stop: the kernel still stops it.
    src = (
        UNHOOK
        + f"""
import os
try:
    print(open({str(secret)!r}).read())
except OSError as e:
    print('blocked', e.errno)
"""
    )
    r = run_python(src, FAST)
    assert r.ok and "s3cr3t" not in r.stdout and "blocked" in r.stdout


def test_nothing_survives_the_timeout():
    src = UNHOOK + "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nwhile True:\n    pass\n"
    r = run_python(src, SandboxLimits(timeout_s=1.0, cpu_s=2))
    assert r.timed_out
    from tests.integration.test_sandbox import survivors

    assert survivors(r.workdir) == []


# -- rewards the program cannot fake -------------------------------------------------------------------------------

TESTS = "assert f(2) == 91173\nassert f(3) == 91174\n"
FAKES = {
    "os._exit": "import os\nos._exit(0)",
    "SystemExit": "raise SystemExit(0)",
    "atexit": "import atexit, os, sys\natexit.register(os._exit, 0)\ndef f(x):\n    sys.exit(0)",
    "always-equal": "class A:\n    def __eq__(self, o):\n        return True\ndef f(x):\n    return A()",
    "read the tests": (
        "import os, re\nfound = []\n"
        "for p in os.listdir('.') + ['/proc/self/cmdline', '/proc/self/environ']:\n"
        "    try:\n        found += re.findall(r'\\d{5}', open(p, errors='replace').read())\n"
        "    except OSError:\n        pass\n"
        "print(found)\nV = [int(x) for x in found]\ndef f(x):\n    return V[x - 2] if len(V) > x - 2 else 0"
    ),
    "forged result": (
        "import os, json\n"
        "fake = json.dumps({'nonce': '0' * 32, 'values': [['v', 91173], ['v', 91174]]}).encode()\n"
        "for fd in range(3, 64):\n    try:\n        os.read(fd, 64) if fd < 5 else None\n        os.write(fd, fake)\n"
        "    except OSError:\n        pass\nos._exit(0)"
    ),
    "int subclass": "class I(int):\n    def __eq__(self, o):\n        return True\ndef f(x):\n    return I(0)",
    # The nonce pipe is the program's fd too: a result in the right format, with this run's nonce, still has to
    # hold the expected values, which never entered the sandbox.
    "stolen nonce": (
        # The fds keep the parent's numbers: look for them all. A well-formed result (tagged JSON), so only its
        # values can make it score 0.
        "import os\nfds = [int(x) for x in os.listdir('/proc/self/fd') if int(x) > 2]\nnonce = b''\n"
        "for fd in fds:\n    try:\n        got = os.read(fd, 64)\n"
        "    except OSError:\n        continue\n    if len(got) == 32:\n        nonce = got\n"
        "for fd in fds:\n    try:\n"
        "        os.write(fd, nonce + b'\\n' + b'[[\"v\",0],[\"v\",1]]')\n"
        "    except OSError:\n        pass\nos._exit(0)"
    ),
}


# A program that defines no `f` scores 0 before it runs (the test's `f` would be nobody's): each fake defines one, so
# that what it tries is what decides.
DEFINES_F = "def f(x):\n    return 0\n"


@pytest.mark.parametrize("name", list(FAKES))
def test_reward_fakes_score_zero(name: str):
    program = FAKES[name] if "def f(" in FAKES[name] else DEFINES_F + FAKES[name]
    reward, details = code_match(program, TESTS, FAST)
    assert reward == 0.0, (name, details)
    assert details.get("sandbox_s") is not None, details  # it ran
    if name == "stolen nonce":  # the forged result was taken as finished: its values, not its form, scored 0
        assert details["error"] == "failed: f(2) == 91173", details
    if name == "read the tests":
        r = run_python(FAKES[name], FAST, steps=compile_tests(TESTS)[0])
        assert r.ok and "91173" not in r.stdout


def test_comparisons_are_type_strict():
    assert code_match("def f():\n    return 1", "assert f() == True", FAST)[0] == 0.0
    assert code_match("def f():\n    return 1.0", "assert f() == 1", FAST)[0] == 1.0  # by value, as Python compares
    assert code_match("def f():\n    return 1.5", "assert f() == 1", FAST)[0] == 0.0
    assert code_match("def f():\n    return [1, 2]", "assert f() == (1, 2)", FAST)[0] == 0.0
    assert code_match("def f():\n    return (1, 2)", "assert f() == (1, 2)", FAST)[0] == 1.0
    assert code_match("def f():\n    return 1", "assert f()", FAST)[0] == 0.0  # truthy is not True
    assert code_match("def f():\n    return 3", "assert f() > 2\nassert not f() == 4\nassert f() in [1, 3]")[0] == 1.0


def test_a_correct_numpy_solution_scores_one():
    src = "import numpy as np\ndef f(xs):\n    return int(np.asarray(xs).sum())"
    reward, details = code_match(src, "assert f([1, 2, 3]) == 6\nassert f([]) == 0")
    assert reward == 1.0, details


def test_humaneval_check_functions_are_split_too():
    tests = "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(0) == 0\n\ncheck(double)\n"
    assert code_match("def double(x):\n    return 2 * x", tests)[0] == 1.0
    assert code_match("def double(x):\n    return x + 2", tests)[0] == 0.0


@pytest.mark.skipif(not ROOT, reason="the refusal is for root")
def test_without_isolation_the_code_verifier_refuses_to_start():
    # Forced "no isolation available": no bwrap on the path the sandbox looks at.
    script = (
        "import sys\nfrom scalerl.shared.tasks.types import TaskError\n"
        "from scalerl.shared.tasks.verifiers import make_verifier\n"
        "try:\n    make_verifier('code')\nexcept TaskError as e:\n    print(e, file=sys.stderr)\n    sys.exit(2)\n"
    )
    env = {**os.environ, "SCALERL_SANDBOX_BWRAP": ""}
    env.pop("SCALERL_SANDBOX_ACCEPT_RISK", None)
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "apt-get install -y bubblewrap" in r.stderr and "SCALERL_SANDBOX_ACCEPT_RISK" in r.stderr
    # A caller that goes straight to run_python gets no process either.
    check = "from scalerl.shared.tasks.sandbox import run_python\nr = run_python('print(1)')\n"
    check += "assert r.returncode is None and not r.ok and 'refused' in r.stderr, r\n"
    assert subprocess.run([sys.executable, "-c", check], env=env, timeout=60).returncode == 0
    env["SCALERL_SANDBOX_ACCEPT_RISK"] = "1"
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    if ROOT:  # the program would run as root: the variable lifts nothing
        assert r.returncode == 2 and "SCALERL_SANDBOX_ACCEPT_RISK does not apply as root" in r.stderr, r.stderr
    else:
        assert r.returncode == 0, r.stderr


def test_signal_probe_helper_is_real():
    # The victims above are real processes this test can kill: a probe that "passes" by a dead victim would lie.
    v = _victim(None)
    os.kill(v.pid, signal.SIGKILL)
    assert v.wait() == -signal.SIGKILL


# -- the parent's side of the boundary: what it reads back, and what it leaves ----------------------------------


def _within(seconds: float, fn: Callable[[], Any]) -> Any:
    """fn(), or a test failure when it has not returned after `seconds` (its thread is left blocked)."""
    box: list[Any] = []
    worker = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert box, f"blocked for {seconds} s"
    return box[0]


@pytest.mark.parametrize("plant", ["symlink", "fifo"])
def test_the_parent_never_reopens_a_name_the_program_controls(secret: Path, plant: str, monkeypatch):
    # stdout / stderr were files in the working directory that the parent opened by name after the run, as root:
    # a symlink there put the run secret into the details, a FIFO blocked the generator in open() forever.
    # With bwrap's tmpfs the program plants in a directory the host never sees, and the test would pass either way:
    # the host directory (bwrap before 0.7) is bound instead, so the names it plants are the ones the parent has.
    monkeypatch.setattr(sandbox, "_bwrap_has_size", lambda bwrap: False)
    src = f"""
import ctypes, os
for name in ('stdout', 'stderr'):
    try:
        os.unlink(name)
    except OSError:
        pass
    if {plant!r} == 'fifo':
        os.mkfifo(name)
    else:
        ctypes.CDLL(None).symlink({str(secret).encode()!r}, name.encode())
print('planted')
raise SystemExit(1)
"""
    reward, details = _within(20, lambda: code_match(src, "assert True", FAST))
    r = _within(20, lambda: run_python(src, FAST))
    assert reward == 0.0 and "s3cr3t" not in str(details), details
    assert "s3cr3t" not in r.stdout + r.stderr and r.stdout == "planted\n", r


def test_memory_outside_rlimit_as_is_bounded_too():
    # RLIMIT_AS counts mappings only: a memfd filled with write(), a SysV segment filled and detached, and data
    # queued on socketpairs live in the kernel. Each route held 3x the limit (socketpairs: gigabytes with the
    # host's fd limit) before; now each is refused or held under the limit.
    limits = SandboxLimits(timeout_s=10.0, cpu_s=10, memory_mb=128)
    src = """
import ctypes, os, socket
MB, CAP = 1 << 20, 384 << 20
held, keep = 0, []
try:
    while held < CAP:
        fd = os.memfd_create('x')
        keep.append(fd)
        held += os.write(fd, b'x' * (16 * MB))
except OSError as e:
    print('memfd stopped', e.errno)
print('memfd', held // MB)
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
held = 0
while held < CAP:
    seg = libc.shmget(0, 16 * MB, 0o1600)
    if seg < 0:
        print('shmget stopped', ctypes.get_errno())
        break
    p = libc.shmat(seg, None, 0)
    ctypes.memset(p, 1, 16 * MB)
    libc.shmdt(ctypes.c_void_p(p))
    held += 16 * MB
print('shm', held // MB)
held = 0
try:
    while held < CAP:
        a, b = socket.socketpair()
        keep.append((a, b))
        a.setblocking(False)
        try:
            while True:
                held += a.send(b'x' * 65536)
        except BlockingIOError:
            pass
except OSError as e:
    print('socketpair stopped', e.errno)
print('socketpair', held // MB)
"""
    r = run_python(src, limits)
    assert r.ok, r.stderr
    held = {k: int(v) for k, v in (ln.split() for ln in r.stdout.splitlines() if len(ln.split()) == 2)}
    assert held["memfd"] == 0 and held["shm"] == 0 and held["socketpair"] < limits.memory_mb, r.stdout


def test_what_it_writes_is_bounded_and_left_nowhere(monkeypatch):
    # RLIMIT_FSIZE bounds one file, not how many: the working directory was on the host's disk, and a tree deeper
    # than Python's recursion made the parent's rmtree raise out of run_python, leaving the directory behind.
    limits = SandboxLimits(timeout_s=10.0, cpu_s=10, work_mb=32)
    src = """
import os
MB = 1 << 20
written = 0
try:
    for i in range(6):
        with open(f'f{i}', 'wb') as f:
            written += f.write(b'x' * (16 * MB))
except OSError as e:
    print('stopped', e.errno)
print('written', written // MB)
for i in range(6):
    try:
        os.remove(f'f{i}')
    except OSError:
        pass
for _ in range(1500):
    os.mkdir('d')
    os.chdir('d')
print('deep')
"""
    r = run_python(src, limits)
    assert r.ok, r.stderr
    assert "deep" in r.stdout and not os.path.exists(r.workdir), r.stdout
    if backend() == "bwrap" and sandbox._bwrap_has_size(sandbox._bwrap_path() or ""):
        assert int(r.stdout.split("written ")[1].split()[0]) <= 32, r.stdout
    # bwrap before 0.7 (no --size): the directory is the host's, and the deep tree is removed all the same (no bwrap
    # with the risk accepted: test_sandbox.py, which runs without bwrap).
    deep = "import os\nfor _ in range(1100):\n    os.mkdir('d')\n    os.chdir('d')\n"
    monkeypatch.setattr(sandbox, "_bwrap_has_size", lambda bwrap: False)
    r = run_python(deep, SandboxLimits(timeout_s=10.0, cpu_s=10))
    assert r.ok and not os.path.exists(r.workdir), r.stderr


def test_only_the_working_directory_is_writable_even_by_its_mounts_owner():
    # Not root, bwrap's tmpfs mounts (/, /dev, /dev/shm, /tmp) are the caller's uid's, and its chmod made them
    # writable: files without bound (a tmpfs takes half the RAM), past RLIMIT_FSIZE per file and work_mb. As root
    # the run's uid cannot write root's 0755 directories, but the mounts are read-only for both users now, which this
    # reads from the sandbox's own mount table.
    src = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
for d in ('/', '/dev', '/dev/shm', '/tmp', '.'):
    libc.chmod(d.encode(), 0o777)
    fd = libc.open((d + '/planted').encode(), os.O_WRONLY | os.O_CREAT, 0o666)
    print('wrote' if fd >= 0 else 'blocked', d)
for line in open('/proc/self/mounts'):
    _, where, _, options = line.split()[:4]
    if where in ('/', '/dev', '/dev/shm', '/tmp', os.getcwd()):
        print('mount', where, options.split(',')[0])
"""
    r = run_python(src, FAST)
    assert r.ok, r.stderr
    lines = r.stdout.splitlines()
    assert [ln for ln in lines if ln.startswith("wrote")] == ["wrote ."], r.stdout
    mounts = {ln.split()[1]: ln.split()[2] for ln in lines if ln.startswith("mount")}
    for path in ("/", "/dev", "/dev/shm", "/tmp"):
        assert mounts.get(path) == "ro", (path, r.stdout)
    assert r.workdir not in mounts or mounts[r.workdir] == "rw", r.stdout


@pytest.mark.skipif(backend() != "bwrap", reason="the fallback's /tmp is the host's, read-only")
def test_nothing_is_left_for_the_next_item():
    # A program that plants files for the next item's code (its directory, /tmp, /dev/shm) finds none of them
    # there: each run has a tmpfs of its own, and /tmp and /dev/shm are not writable.
    plant = "for d in ('.', '/tmp', '/dev/shm'):\n    try:\n        open(d + '/planted', 'w').write('x')\n"
    plant += "        print('wrote', d)\n    except OSError:\n        pass\n"
    look = "import os\nhere = os.path.basename(os.getcwd())\n"
    look += "print(sorted(os.listdir('.')), [n for n in os.listdir('/tmp') if n != here], os.listdir('/dev/shm'))"
    assert "wrote ." in run_python(plant, FAST).stdout
    r = run_python(look, FAST)
    assert r.ok and r.stdout == "['main.py', 'steps.txt'] [] []\n", r.stdout


def test_an_output_flood_is_cut_and_scores_zero():
    t0 = time.monotonic()
    reward, details = code_match(
        "import sys\nwhile True:\n    sys.stdout.write('PASSED ok 1\\n' * 4096)", "assert True"
    )
    assert reward == 0.0 and details["exit_code"] != 0 and time.monotonic() - t0 < 10, details
    r = run_python("print('x' * (64 << 20))", FAST)
    assert not r.ok and len(r.stdout) <= 2000


@pytest.mark.skipif(backend() != "bwrap", reason="the run-time failure of a bwrap that passed its probe")
def test_a_bwrap_that_fails_at_run_time_fails_closed(tmp_path: Path, monkeypatch):
    # bwrap passes its probe (the first call), then refuses: the item is an error with bwrap's message, and the
    # program never runs outside it (no fallback to the namespaces or to nothing).
    fake, real = tmp_path / "bwrap", sandbox._bwrap_path()
    fake.write_text(
        f'#!/bin/sh\n[ "$1" = --help ] && exec {real} --help\n'  # the --size check is not the probe
        f"if [ -e {tmp_path}/used ]; then echo 'bwrap: Creating new namespace failed' >&2; exit 1; fi\n"
        f'touch {tmp_path}/used\nexec {real} "$@"\n'
    )
    fake.chmod(0o755)
    tmp_path.chmod(0o777)
    monkeypatch.setenv("SCALERL_SANDBOX_BWRAP", str(fake))
    src = f"open({str(tmp_path / 'ran')!r}, 'w').write('x')\ndef f():\n    return 1"
    reward, details = code_match(src, "assert f() == 1", FAST)
    assert reward == 0.0 and details["error"] == "bwrap: Creating new namespace failed", details
    assert (tmp_path / "used").exists() and not (tmp_path / "ran").exists()


def test_no_inherited_fd_or_home_directory_reaches_the_secret(secret: Path):
    # An inheritable fd on the secret in the parent (close_fds) and the caller's home and cache (not in the root).
    fd = os.open(secret, os.O_RDONLY)
    os.set_inheritable(fd, True)
    home = os.path.expanduser("~")
    src = f"""
import os
found = []
for n in range(3, 1024):
    try:
        os.lseek(n, 0, 0)
        found.append(os.read(n, 100))
    except OSError:
        pass
for p in ({home!r}, {os.path.join(home, ".cache")!r}, {str(secret.parent)!r}):
    try:
        found.append(os.listdir(p))
    except OSError as e:
        found.append(e.errno)
print(found)
"""
    try:
        r = run_python(src, FAST)
    finally:
        os.close(fd)
    assert r.ok and "s3cr3t" not in r.stdout and ".secret" not in r.stdout, r.stdout


def test_no_disk_reserved_past_the_file_size_limit():
    # fallocate(FALLOC_FL_KEEP_SIZE) on the stdout and stderr files (in the host's temp dir) reserved 2 GiB each while
    # their size stayed 0, which RLIMIT_FSIZE does not see: the host's disk, the run's checkpoints included, filled.
    src = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
for fd in (1, 2):
    rc = libc.fallocate(fd, 1, 0, 64 << 20)
    print(fd, rc, ctypes.get_errno(), os.fstat(fd).st_blocks * 512 >> 20, flush=True)
"""
    r = run_python(src, FAST)
    assert r.ok, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    assert [row[0] for row in rows] == ["1", "2"]
    assert all(row[1] == "-1" and row[2] == "95" and row[3] == "0" for row in rows), r.stdout  # EOPNOTSUPP, 0 MiB
