"""Run untrusted Python (a model's completion plus a task's tests) in a separate, limited process.

What each run gets (docs/tasks.md, "The code verifier", says what this does NOT protect against):

- a fresh temporary working directory, removed afterwards, which is also where stdout and stderr go (as files, so
  a program that prints without end fills at most the file-size limit, never this process's memory);
- resource limits set in the child before it starts Python: CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS),
  largest file written (RLIMIT_FSIZE), processes (RLIMIT_NPROC), no core files;
- where the kernel allows unprivileged user namespaces (checked once per process): new user, network, mount and
  pid namespaces. The network namespace has only a downed loopback, so nothing can be reached; the mount
  namespace sees every filesystem read-only except the working directory; the pid namespace makes the program's
  first process its init, so killing it kills every process the program started, even one that left the process
  group; and RLIMIT_NPROC counts only the namespace's processes (for root, whom the kernel otherwise exempts);
- always, also in the namespaces: an audit hook in the child's interpreter that refuses writes and deletions
  outside the working directory, sockets, signals to other processes, starting other programs and ctypes, and
  that refuses os.fork where RLIMIT_NPROC cannot hold (root without a user namespace);
- a wall-clock timeout, after which (and after every run, however it ended) the whole process group is killed.

No torch here; a generator calls this once per code completion.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SandboxLimits", "SandboxResult", "run_python", "isolation"]

# <linux/sched.h>, <linux/mount.h>
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
MOUNT_ATTR_RDONLY, AT_RECURSIVE, AT_FDCWD = 0x1, 0x8000, -100
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (syscalls added after 5.1 are unified)
OUTPUT_TAIL = 2000  # characters of stdout / stderr kept in a result


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0  # wall clock, for the whole run
    cpu_s: int = 5  # per process (RLIMIT_CPU)
    memory_mb: int = 512  # address space per process (RLIMIT_AS); Python itself needs ~30
    file_size_mb: int = 16  # largest file any process may write, stdout and stderr included (RLIMIT_FSIZE)
    max_procs: int = 16  # RLIMIT_NPROC
    isolate: bool = True  # use namespaces where the kernel allows them


@dataclass(frozen=True)
class SandboxResult:
    returncode: int | None  # None: killed at the wall-clock timeout
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float
    isolation: tuple[str, ...] = field(default=())  # which namespaces this run had ("user", "net", "mount", "pid")
    workdir: str = ""  # removed by the time the result is returned; processes still naming it are survivors

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


class _Libc:
    """libc's unshare/mount/syscall, looked up in the parent: a preexec function should not import or load."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL(None, use_errno=True)
        self.lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
        self.lib.syscall.restype = ctypes.c_long

    def unshare(self, flags: int) -> None:
        if self.lib.unshare(flags) != 0:
            raise OSError(ctypes.get_errno(), "unshare")

    def mount(self, source: bytes | None, target: bytes, flags: int) -> None:
        if self.lib.mount(source, target, None, flags, None) != 0:
            raise OSError(ctypes.get_errno(), f"mount {target!r}")

    def set_readonly(self, path: bytes, readonly: bool, recursive: bool) -> None:
        # struct mount_attr {u64 attr_set, attr_clr, propagation, userns_fd}
        attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY if readonly else 0, 0 if readonly else MOUNT_ATTR_RDONLY, 0, 0)
        flags = AT_RECURSIVE if recursive else 0
        if self.lib.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path, flags, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
            raise OSError(ctypes.get_errno(), f"mount_setattr {path!r}")


def _isolate(libc: _Libc, workdir: bytes, mount: bool) -> None:
    """In the child, before exec: new namespaces; with `mount`, everything read-only but the working directory."""
    flags = CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID | (CLONE_NEWNS if mount else 0)
    libc.unshare(flags)
    if mount:
        libc.mount(None, b"/", MS_REC | MS_PRIVATE)  # nothing done here propagates back to the host
        libc.mount(workdir, workdir, MS_BIND | MS_REC)  # its own mount, so it can stay writable
        libc.set_readonly(b"/", True, recursive=True)
        libc.set_readonly(workdir, False, recursive=False)
        os.chdir(workdir)  # Popen entered it before these mounts: the old, now read-only view


@functools.lru_cache(maxsize=1)
def isolation() -> tuple[str, ...]:
    """The namespaces this machine lets an unprivileged child create, tried once in a throwaway child:
    ("user", "net", "pid", "mount"), ("user", "net", "pid"), or () (containers without user namespaces, old
    kernels, non-Linux)."""
    if not sys.platform.startswith("linux"):
        return ()
    libc = _Libc()
    workdir = tempfile.mkdtemp(prefix="scalerl-sandbox-probe-")
    try:
        for mount, got in ((True, ("user", "net", "pid", "mount")), (False, ("user", "net", "pid"))):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child only reports through its exit status
                code = 1
                try:
                    _isolate(libc, workdir.encode(), mount)
                    code = 0
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) == 0:
                return got
        return ()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# Runs in the sandboxed interpreter (python -I -S -c BOOTSTRAP). argv: [-c, guard_fork]. It forks once so that
# the program runs as the pid namespace's init (when there is one); then installs the guard and runs main.py.
BOOTSTRAP = r"""
import os, sys
guard_fork = sys.argv[1] == "1"
pid = os.fork()
if pid:
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)
work = os.path.realpath(os.getcwd())
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
PATH_EVENTS = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1, "os.truncate": 1,
               "os.utime": 1, "os.rename": 2, "os.link": 2, "os.symlink": 2, "shutil.rmtree": 1}
BLOCKED = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen", "ctypes.", "socket.", "os.kill",
           "os.killpg", "signal.pthread_kill", "os.forkpty", "pty.")
def inside(path):
    if isinstance(path, int):
        return True
    p = os.path.realpath(os.path.join(work, os.fsdecode(path)))
    return p == work or p.startswith(work + os.sep) or p == "/dev/null"
def guard(event, args):
    if event == "open":
        path, mode, flags = args
        writing = (mode is not None and any(c in mode for c in "wax+")) or (flags or 0) & WRITE_FLAGS
        if writing and path is not None and not inside(path):
            raise PermissionError(f"sandbox: no writes outside the working directory: {path!r}")
    elif event in PATH_EVENTS:
        for path in args[: PATH_EVENTS[event]]:
            if path is not None and not isinstance(path, int) and not inside(path):
                raise PermissionError(f"sandbox: {event} outside the working directory: {path!r}")
    elif event.startswith(BLOCKED) or (guard_fork and event == "os.fork"):
        raise PermissionError(f"sandbox: {event} is not allowed")
sys.addaudithook(guard)
sys.argv = ["main.py"]
with open("main.py") as f:
    source = f.read()
del f, pid
exec(compile(source, "main.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
"""


def run_python(source: str, limits: SandboxLimits = SandboxLimits(), python: str | None = None) -> SandboxResult:
    """Run `source` as a Python program under `limits`; never raises for anything the program does."""
    namespaces = isolation() if limits.isolate else ()
    libc = _Libc() if namespaces else None
    # RLIMIT_NPROC does not bind root outside a user namespace: there the guard refuses fork instead.
    guard_fork = os.geteuid() == 0 and "user" not in namespaces
    workdir = tempfile.mkdtemp(prefix="scalerl-sandbox-")
    t0 = time.monotonic()
    try:
        Path(workdir, "main.py").write_text(source)
        out_path, err_path = Path(workdir, "stdout"), Path(workdir, "stderr")
        mb = 1024 * 1024

        def preexec() -> None:
            for res, value in (
                (resource.RLIMIT_CPU, limits.cpu_s),
                (resource.RLIMIT_AS, limits.memory_mb * mb),
                (resource.RLIMIT_FSIZE, limits.file_size_mb * mb),
                (resource.RLIMIT_NPROC, limits.max_procs),
                (resource.RLIMIT_CORE, 0),
            ):
                resource.setrlimit(res, (value, value))
            if libc is not None:
                _isolate(libc, workdir.encode(), "mount" in namespaces)

        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [python or sys.executable, "-I", "-S", "-c", BOOTSTRAP, "1" if guard_fork else "0"],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True,  # its own process group, killed as one below
                preexec_fn=preexec,
                close_fds=True,
            )
            try:
                returncode: int | None = proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                returncode = None
            finally:
                _kill_group(proc)
        return SandboxResult(
            returncode=returncode,
            timed_out=returncode is None,
            stdout=_tail(out_path),
            stderr=_tail(err_path),
            seconds=time.monotonic() - t0,
            isolation=namespaces,
            workdir=workdir,
        )
    except (OSError, subprocess.SubprocessError) as e:  # could not start it (fds, memory): no reward, no crash
        return SandboxResult(None, False, "", f"sandbox: {type(e).__name__}: {e}", time.monotonic() - t0, namespaces)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group (its pid namespace dies with its init) and reap the leader."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - OUTPUT_TAIL))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
