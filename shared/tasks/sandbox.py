"""Run untrusted Python (a model's completion plus a task's test expressions) in a separate, limited process.

The boundary is the kernel (docs/tasks.md, "The code sandbox", lists what each layer stops and what it does not):

- **bubblewrap** (`bwrap`, Debian's `bubblewrap`), where installed: new pid, network, ipc, uts and mount namespaces
  (--die-with-parent, --new-session); a root of its own holding only read-only binds of /usr, the interpreter's
  prefix, numpy and /etc/ld.so.cache, a fresh /proc that shows only the sandbox's processes, a fresh /dev, /dev/shm
  and /tmp, these and its / mounted read-only (for root and not root alike), and the work directory as the one
  writable place: a tmpfs of work_mb (main.py and steps.txt bound read-only into it), nothing on the host's disk.
  The host's /tmp (where the run's ipc sockets live), the run directory and its secret are simply not there, nor
  is /root unless the interpreter's prefix lies under it (pyenv, conda, uv): then that prefix alone, read-only.
- **an unprivileged uid of its own**: as root, bwrap runs without a user namespace (a user namespace made by root
  maps the sandbox's uid to host uid 0, and the kernel's owner checks then pass on every root-owned file), and the
  harness's first act inside it is setgroups([]) + setgid/setuid(uid): from there on the program is that host uid
  with no capabilities and no supplementary groups. Each run claims its uid (gid the same number) from
  SANDBOX_UID_BASE's range for as long as it runs (_claim_uid: an exclusive flock on a lock file per uid in root's
  UID_LOCK_DIR, shared by every process that sees the same /run and /proc (not by root containers without a user
  namespace that have their own: docs/tasks.md); a uid with an account, a /etc/subuid or /etc/subgid range, or a
  running process is skipped; none free: the run is refused). RLIMIT_NPROC counts a host uid's processes, so runs
  that shared one uid shared its max_procs, and a fork bomb in one failed another's fork(). Not root: bwrap's own user
  namespace, the program keeps the caller's uid (already unprivileged); RLIMIT_NPROC is set by the harness inside
  it, where it counts that namespace's processes only (set before bwrap, the kernel also held the caller's uid, all
  of its processes on the host, to it: with 16 of them bwrap could not even start).
- **a seccomp filter**, loaded by the harness through libseccomp (ctypes over Debian's libseccomp2, the library both
  Python bindings wrap) before any model code runs: no execve, ptrace, process_vm_*, pidfd_*, socket() (only
  socketpair(AF_UNIX)), mount and friends, namespaces, bpf, io_uring, keyctl, memfd_create, SysV shm and message
  queues (memory RLIMIT_AS does not count), kill(-1) and tkill.
- resource limits (RLIMIT_CPU, _AS, _FSIZE, _NPROC, _NOFILE, no cores) and a wall-clock timeout, after which bwrap
  is killed and its pid namespace with it;
- an audit hook as a second layer only (its state lives in a closure; it is not what anything here relies on).

Fail closed: without bwrap there is no way to run the program as another uid (root) or without the caller's files
in view (not root: the run secret is that uid's), so `require_sandbox()` raises SandboxUnavailable (the code verifier
turns that into TaskError, exit 2) and run_python starts nothing, unless SCALERL_SANDBOX_ACCEPT_RISK=1 says to run it
anyway with the namespaces / audit hook of old.

Rewards the program cannot fake: expected values never enter the sandbox. The harness (below) evaluates the test
expressions the parent sends, serialises their values as tagged JSON (the parent reads it with json.loads, which runs
nothing and reads the 1 MiB it takes at most in tens of milliseconds), reads a per-run random nonce from a pipe only
after every expression was evaluated, and writes nonce + values to a second pipe. The parent requires that nonce and
compares the values type-strictly itself (code_verifier.py); the exit code is only reported. The nonce pipe is the
program's fd too: the nonce tells a finished harness from an early exit, it does not authenticate the values (the
expected ones decide).
No torch here; a generator calls this once per code completion.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import grp
import hmac
import importlib.util
import json
import os
import pwd
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "run_python",
    "isolation",
    "backend",
    "require_sandbox",
    "SANDBOX_UID_BASE",
    "SANDBOX_UID_SLOTS",
    "UID_LOCK_DIR",
]

# <linux/sched.h>, <linux/mount.h>
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
MOUNT_ATTR_RDONLY, AT_RECURSIVE, AT_FDCWD = 0x1, 0x8000, -100
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (syscalls added after 5.1 are unified)
OUTPUT_TAIL = 2000  # characters of stdout / stderr kept in a result
RESULT_MAX = 1 << 20  # bytes of harness result read; more is a failed run, not memory taken from the generator
# As root each run is a uid (and the gid of the same number) of its own from this range, claimed with a lock file
# per uid in UID_LOCK_DIR (_claim_uid). 1879048192 (0x70000000) up: in the range systemd's UID/GID assignments
# (https://systemd.io/UIDS-GIDS/) leave unused, above regular users, nobody, DynamicUser= and nspawn's containers.
SANDBOX_UID_BASE = 0x70000000
SANDBOX_UID_SLOTS = 4096  # runs at the same time on one host, at most
UID_LOCK_DIR = "/run/scalerl-sandbox-uids"  # root's, 0700; shared by the processes that see this /run
ACCEPT_RISK_ENV = "SCALERL_SANDBOX_ACCEPT_RISK"
BWRAP_ENV = "SCALERL_SANDBOX_BWRAP"  # path of bwrap; "" = do not use it (tests force "no bwrap" with it)
SITE = "/opt/scalerl-site"  # where numpy is bound inside the bwrap root


class SandboxUnavailable(RuntimeError):
    """No isolation that keeps model code from the caller's uid and files (bwrap missing, or installed and unable to
    run here) or no seccomp: one line saying what is missing or why it fails."""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0  # wall clock, for the whole run
    cpu_s: int = 5  # per process (RLIMIT_CPU)
    memory_mb: int = 512  # address space per process (RLIMIT_AS); Python itself needs ~30, numpy ~60 more
    file_size_mb: int = 16  # largest file any process may write, stdout and stderr included (RLIMIT_FSIZE)
    max_procs: int = 16  # RLIMIT_NPROC
    # RLIMIT_NOFILE: socket and pipe buffers are kernel memory RLIMIT_AS does not count (~230 KB queued per
    # socketpair): with the host's 20000 fds one process held gigabytes; 256 fds hold about 30 MB.
    open_files: int = 256
    # bwrap: the working directory is a tmpfs of this size, inside the sandbox only (RLIMIT_FSIZE bounds one file,
    # not how many: on the host's disk a program wrote without bound, and a tree deeper than Python's recursion
    # limit made the parent's rmtree raise and leave the directory behind).
    work_mb: int = 64
    isolate: bool = True  # False: no bwrap and no namespaces (refused, for any user, unless the risk is accepted)


@dataclass(frozen=True)
class SandboxResult:
    returncode: int | None  # None: killed at the wall-clock timeout
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float
    isolation: tuple[str, ...] = field(default=())  # "bwrap", "uid", "seccomp", or the namespaces of the fallback
    workdir: str = ""  # removed by the time the result is returned; processes still naming it are survivors
    completed: bool = False  # the harness reached its end and echoed this run's nonce
    values: list[Any] | None = None  # tagged value (sandbox._tag) of each evaluated expression, only when `completed`

    @property
    def ok(self) -> bool:
        """The program and every test expression ran to the end; the exit code alone never says so."""
        return self.completed and not self.timed_out


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
    """The namespaces this machine lets an unprivileged child create (the fallback without bwrap), tried once in
    a throwaway child: ("user", "net", "pid", "mount"), ("user", "net", "pid"), or ()."""
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


def _bwrap_path() -> str | None:
    configured = os.environ.get(BWRAP_ENV)
    if configured is not None:
        return configured or None
    return shutil.which("bwrap")


def _libseccomp_present() -> bool:
    try:
        ctypes.CDLL("libseccomp.so.2")
        return True
    except OSError:
        return False


def backend(limits: SandboxLimits | None = None) -> str:
    """ "bwrap", "namespaces" (unprivileged user namespaces, not root) or "none"."""
    if limits is not None and not limits.isolate:
        return "none"
    if _bwrap_path() is not None and _bwrap_works(_bwrap_path() or ""):
        return "bwrap"
    if os.geteuid() != 0 and isolation():
        return "namespaces"
    return "none"


def risk_accepted() -> bool:
    """SCALERL_SANDBOX_ACCEPT_RISK=1 runs model code without bwrap, for a user other than root only. As root the
    fallback ran the program as root, every file (the run secret) readable and writable; model code never runs as
    root, so there the variable lifts nothing and the refusal stands."""
    return os.environ.get(ACCEPT_RISK_ENV) == "1" and os.geteuid() != 0


def require_sandbox(limits: SandboxLimits | None = None) -> None:
    """Raise SandboxUnavailable (one line) where model code would run without bwrap (as root: as root; not root: as
    the caller, seeing the caller's files), or without seccomp."""
    accepted = os.environ.get(ACCEPT_RISK_ENV) == "1"
    if not _libseccomp_present() and not accepted:
        raise SandboxUnavailable(
            "the code sandbox needs libseccomp (apt-get install -y libseccomp2), or set "
            f"{ACCEPT_RISK_ENV}=1 to run model code without a seccomp filter"
        )
    if backend(limits) != "bwrap" and not risk_accepted():
        raise SandboxUnavailable(_refusal())


def _refusal() -> str:
    # Not root, the fallback kept the caller's uid: with user namespaces it saw the host's files read-only (the run
    # secret, mode 0600, that uid's); without them (a container's default seccomp profile) it had rlimits, seccomp
    # and the audit hook alone, and ctypes' open() rewrote the caller's files.
    who = "as root" if os.geteuid() == 0 else "as this user, where it can read this user's files (the run secret)"
    broken = _broken_bwrap()
    why = f": {broken}" if broken else " without bubblewrap: apt-get install -y bubblewrap"
    if os.geteuid() == 0:
        return f"refusing to run model-written code {who}{why} ({ACCEPT_RISK_ENV} does not apply as root)"
    return f"refusing to run model-written code {who}{why} (or set {ACCEPT_RISK_ENV}=1 to accept the risk)"


def _broken_bwrap() -> str | None:
    """Why an installed bwrap is not the backend, or None where none is installed. One that fails its probe
    (Docker's default seccomp profile refuses its namespaces) is not fixed by installing it: say that it cannot run
    here, in bwrap's own words."""
    bwrap = _bwrap_path()
    failure = _bwrap_failure(bwrap) if bwrap is not None and os.path.exists(bwrap) else None
    return f"bubblewrap is installed ({bwrap}) but cannot run here: {failure}" if failure else None


def _bwrap_works(bwrap: str) -> bool:
    return _bwrap_failure(bwrap) is None


@functools.lru_cache(maxsize=4)
def _bwrap_failure(bwrap: str) -> str | None:
    """One real sandboxed run, once per bwrap path: None where it works, else why not (the first line of its
    stderr). A kernel or container that refuses its namespaces or its /proc mount is found here, not as reward 0 on
    every sample."""
    if not os.path.exists(bwrap):
        return f"{bwrap} not found"
    try:
        r = _run(bwrap, "print(6 * 7)", [], SandboxLimits(timeout_s=20, cpu_s=10), None)
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    if r.completed and r.stdout.strip() == "42":
        return None
    lines = r.stderr.strip().splitlines()
    if not lines:
        return "timed out" if r.timed_out else f"exit code {r.returncode}"
    # bwrap's own error is its first line; a Python traceback (the harness failed inside) says why in its last.
    return (lines[-1] if lines[0].startswith("Traceback") else lines[0])[:200]


# The harness: python -I -S -c HARNESS <nonce fd> <result fd> <uid to drop to, 0: none> <pid1 fork 0/1>
# <site dir or ""> <work> <max procs>.
# Trusted code that runs before the program, in the sandbox's interpreter. Everything it keeps is local to
# _main (a closure), so the program finds no module global to switch the hook off with.
HARNESS = r"""
import os, sys
def _main():
    nonce_fd, result_fd = int(sys.argv[1]), int(sys.argv[2])
    uid, init_fork, site, work = int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5], sys.argv[6]
    import ctypes, resource  # json is not imported: its `re` costs a third of a run's start
    # The limits are set here, after exec, and not in a preexec_fn: RLIMIT_AS below the parent's own address space
    # (a generator with torch loaded) made the forked child's Python fail between fork and exec now and then
    # (SIGSEGV, the run lost), and Python code between fork and exec in a threaded parent is unsafe anyway.
    try:
        for item in sys.argv[8].split(","):
            res, value = item.split("=")
            resource.setrlimit(getattr(resource, "RLIMIT_" + res), (int(value), int(value)))
    except (OSError, ValueError, AttributeError):
        os._exit(96)
    # The values go back as JSON (_json_text), strings quoted by _json's C function (json's own, without json's
    # `re`); bound here, before the program runs and can replace a module.
    try:
        from _json import encode_basestring_ascii as quote
    except ImportError:  # an interpreter without the C module: json's, whatever it costs
        from json import dumps as quote
    if uid:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid) or os.getgroups():
            os._exit(97)
    # Here, not before bwrap: in bwrap's user namespace (not root) it counts that namespace's processes; set
    # before it, the kernel held the caller's uid, every process of it on the host, to it as well.
    nproc = int(sys.argv[7])
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    os.chdir(work)  # as the run's uid: the fallback's 0700 directory is not for root without capabilities
    try:
        _seccomp(ctypes)
    except OSError as e:
        print(f"sandbox: seccomp: {e}", file=sys.stderr)
        os._exit(98)
    if init_fork:  # the namespaces fallback: the program is the pid namespace's init's child, killed with it
        pid = os.fork()
        if pid:
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)
    if site:
        sys.path.append(site)
    work = os.path.realpath(work)
    os.close(0)
    _guard(work)
    with open("main.py") as f:
        source = f.read()
    with open("steps.txt") as f:
        steps = [r.split("\x1f", 1) for r in f.read().split("\x1e") if r]
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    sys.argv = ["main.py"]
    exec(compile(source, "main.py", "exec"), ns)
    values = []
    for kind, src in steps:
        if kind == "exec":
            exec(compile(src, "<test>", "exec"), ns)
        else:
            values.append(_tag(eval(compile(src, "<test>", "eval"), ns)))
    sys.stdout.flush()
    sys.stderr.flush()
    # The nonce is read only now: a program that ended early (os._exit, SystemExit, atexit) never had it.
    nonce = os.read(nonce_fd, 64).decode()
    out = (nonce + "\n" + _json_text(values, quote)).encode()
    while out:
        out = out[os.write(result_fd, out):]
    os._exit(0)

def _tag(v, depth=0):
    # Exact types only: an int subclass, or any object with its own __eq__, is refused here and scores 0.
    if depth > 50:
        raise ValueError("value nested too deep")
    t = type(v)
    if v is None or t is bool or t is int or t is str:
        return ["v", v]
    if t is float:
        return ["f", repr(v)] if v - v != 0 else ["v", v]  # nan and inf as text: JSON has no number for them
    if t is list or t is tuple or t is set or t is frozenset:
        items = [_tag(x, depth + 1) for x in v]
        return [{list: "l", tuple: "t", set: "s", frozenset: "S"}[t], items]
    if t is dict or isinstance(v, dict) and t.__module__ == "collections":  # Counter, defaultdict: their items
        return ["d", [[_tag(k, depth + 1), _tag(x, depth + 1)] for k, x in dict.items(v)]]
    if t.__module__ == "numpy" and getattr(v, "shape", None) == ():  # a numpy scalar: its Python value
        return _tag(v.item(), depth + 1)
    if t is bytes:
        return ["b", v.hex()]
    raise TypeError(f"test value of type {t.__name__} (only None, bool, int, float, str, bytes, list, tuple, "
                    "set, frozenset, dict compare)")

def _json_text(v, quote):
    # What json.dumps(v, allow_nan=False, separators=(",", ":")) writes for a tagged value (lists, str, int, bool,
    # None, finite float), in ASCII: json.loads in the parent gives back exactly these values and types.
    t = type(v)
    if t is list:
        return "[" + ",".join([_json_text(x, quote) for x in v]) + "]"
    if t is str:
        return quote(v)  # lone surrogates as \udXXX escapes, which json.loads reads back as they were
    if v is None:
        return "null"
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return int.__repr__(v)
    if t is float and v - v == 0:
        return float.__repr__(v)  # always with "." or "e": the parent reads a float, not an int
    raise ValueError(f"not a tagged value: {t.__name__}")

def _seccomp(ctypes):
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    class Cmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(Cmp)]
    ctx = lib.seccomp_init(0x7FFF0000)  # SCMP_ACT_ALLOW by default: a deny list of what escapes or harms others
    if not ctx:
        raise OSError("seccomp_init failed")
    eperm = 0x00050000 | 1
    def deny(name, *cmps, action=eperm):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            return  # not on this architecture
        arr = (Cmp * max(1, len(cmps)))(*[Cmp(*c) for c in cmps])
        rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
        if rc != 0:
            raise OSError(f"seccomp rule for {name}: {rc}")
    for name in ("execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open",
                 "pidfd_getfd", "pidfd_send_signal", "kcmp", "tkill", "socket", "connect", "bind", "listen",
                 "accept", "accept4", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree",
                 "move_mount", "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr", "bpf",
                 "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd", "io_uring_setup",
                 "io_uring_enter", "io_uring_register", "kexec_load", "kexec_file_load", "init_module",
                 "finit_module", "delete_module", "reboot", "swapon", "swapoff", "acct", "name_to_handle_at",
                 "open_by_handle_at", "quotactl", "setdomainname", "sethostname", "syslog", "vhangup",
                 # Memory that RLIMIT_AS does not count: a memfd written with write(), never mapped; a SysV
                 # segment or message queue filled and detached (shm_open needs /dev/shm, a read-only mount).
                 "memfd_create", "memfd_secret", "shmget", "msgget"):
        deny(name)
    # 0 = arg, ops: 1 NE, 4 EQ, 7 MASKED_EQ.
    deny("socketpair", (0, 1, 1, 0))  # only AF_UNIX pairs (multiprocessing)
    deny("kill", (0, 7, 0xFFFFFFFF, 0xFFFFFFFF))  # kill(-1): every process this uid may signal
    deny("tgkill", (0, 1, os.getpid(), 0))
    for flag in (0x00020000, 0x10000000, 0x20000000, 0x40000000, 0x08000000, 0x04000000, 0x02000000):
        deny("clone", (0, 7, flag, flag))  # no new namespaces
    deny("clone3", action=0x00050000 | 38)  # ENOSYS: its flags sit in memory seccomp cannot read; glibc uses clone
    # Disk that RLIMIT_FSIZE does not count: fallocate(FALLOC_FL_KEEP_SIZE) on the stdout and stderr files (in the
    # host's temp dir) reserved gigabytes while the size stayed 0. EOPNOTSUPP: glibc's posix_fallocate then writes
    # zeros instead, which the limit bounds.
    deny("fallocate", action=0x00050000 | 95)  # EOPNOTSUPP
    if lib.seccomp_load(ctx) != 0:
        raise OSError("seccomp_load failed")

def _guard(work):
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    PATHS = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1, "os.truncate": 1,
             "os.utime": 1, "os.rename": 2, "os.link": 2, "os.symlink": 2, "shutil.rmtree": 1}
    BLOCKED = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen", "socket.", "os.killpg",
               "signal.pthread_kill", "os.forkpty", "pty.", "gc.get_objects", "gc.get_referrers",
               "gc.get_referents", "sys.setprofile", "sys.settrace", "sys._current_frames")
    own = os.getpid()
    realpath, join, fsdecode, sep = os.path.realpath, os.path.join, os.fsdecode, os.sep
    def inside(path):
        if isinstance(path, int):
            return True
        p = realpath(join(work, fsdecode(path)))
        return p == work or p.startswith(work + sep) or p == "/dev/null"
    def guard(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in mode for c in "wax+")) or (flags or 0) & WRITE
            if writing and path is not None and not inside(path):
                raise PermissionError(f"sandbox: no writes outside the working directory: {path!r}")
        elif event in PATHS:
            for path in args[: PATHS[event]]:
                if path is not None and not isinstance(path, int) and not inside(path):
                    raise PermissionError(f"sandbox: {event} outside the working directory: {path!r}")
        elif event == "os.kill" and args[0] not in (0, own):
            raise PermissionError("sandbox: signals to other processes are not allowed")
        elif event == "object.__setattr__" and args[0] is guard:
            raise PermissionError("sandbox: the guard is read-only")
        elif event == "socket.__new__" and args[1] == 1:
            pass  # AF_UNIX: socketpair (multiprocessing); seccomp refuses socket() itself
        elif event.startswith(BLOCKED):
            raise PermissionError(f"sandbox: {event} is not allowed")
    sys.addaudithook(guard)

_main()
"""


def run_python(
    source: str,
    limits: SandboxLimits = SandboxLimits(),
    python: str | None = None,
    steps: list[tuple[str, str]] | None = None,
) -> SandboxResult:
    """Run `source` as a Python program under `limits`, then `steps` (("exec", code) or ("eval", expression)) in its
    namespace; never raises for anything the program does. The values of the "eval" steps come back, tagged, in
    `values` (see _tag in HARNESS), only when the harness reached its end."""
    kind = backend(limits)
    if kind != "bwrap" and not risk_accepted():
        # Fail closed here too, for callers that skipped require_sandbox(): no process is started.
        why = "running as root" if os.geteuid() == 0 else "the program would run as this user"
        broken = _broken_bwrap() if limits.isolate else None  # isolate=False: bwrap was not asked for
        return SandboxResult(None, False, "", f"sandbox: refused: {broken or 'no bwrap'} and {why}", 0.0, ())
    bwrap = _bwrap_path() if kind == "bwrap" else None
    return _run(bwrap, source, list(steps or []), limits, python, kind)


def _run(
    bwrap: str | None,
    source: str,
    steps: list[tuple[str, str]],
    limits: SandboxLimits,
    python: str | None,
    kind: str = "bwrap",
) -> SandboxResult:
    t0 = time.monotonic()
    namespaces = isolation() if kind == "namespaces" else ()
    libc = _Libc() if namespaces else None
    root = os.geteuid() == 0
    drop = root and kind == "bwrap"
    workdir = tempfile.mkdtemp(prefix="scalerl-sandbox-")
    nonce = secrets.token_hex(16)
    fds: list[int] = []
    uid = 0  # as root (bwrap): the run's own uid, claimed below; its lock is in `fds`, released in `finally`
    isolation_tags = (("bwrap", "seccomp") + (("uid",) if drop or not root else ())) if bwrap else namespaces
    try:
        if drop:
            uid, lock = _claim_uid()
            fds.append(lock)
        # surrogatepass: a lone surrogate in the completion fails inside (UnicodeDecodeError), not here
        Path(workdir, "main.py").write_text(source, encoding="utf-8", errors="surrogatepass")
        if any("\x1e" in k + src or "\x1f" in k + src for k, src in steps):
            raise ValueError("a test step holds a record separator")
        Path(workdir, "steps.txt").write_text("".join(f"{k}\x1f{src}\x1e" for k, src in steps))
        work_mb = limits.work_mb if bwrap and _bwrap_has_size(bwrap) else None
        for name in ("main.py", "steps.txt"):
            # Read by the harness as the run's uid (as root): bound read-only into the tmpfs they keep the host file's
            # mode, 0666 & ~umask, which under umask 077 left them unreadable and failed every run and the probe.
            os.chmod(os.path.join(workdir, name), 0o444)
        if drop and work_mb is None:  # bwrap before 0.7 (no --size): the host directory is the writable bind
            os.chown(workdir, uid, uid)
            for name in ("main.py", "steps.txt"):
                os.chown(os.path.join(workdir, name), uid, uid)
        os.chmod(workdir, 0o700)  # with a tmpfs over it, hidden: main.py and steps.txt are bound in read-only
        nonce_r, nonce_w = os.pipe()
        result_r, result_w = os.pipe()
        fds += [nonce_r, nonce_w, result_r, result_w]
        os.write(nonce_w, nonce.encode())  # 32 bytes: never blocks
        os.close(nonce_w)
        fds.remove(nonce_w)
        interpreter = python or os.path.realpath(sys.executable)
        site = _numpy_site()
        mb = 1024 * 1024
        argv = [interpreter, "-I", "-S", "-c", HARNESS, str(nonce_r), str(result_w), str(uid)]
        argv += [
            "1" if namespaces and "pid" in namespaces else "0",
            SITE if (bwrap and site) else (site or ""),
            workdir,
            str(limits.max_procs),
            f"CPU={limits.cpu_s},AS={limits.memory_mb * mb},FSIZE={limits.file_size_mb * mb},CORE=0,"
            f"NOFILE={limits.open_files}",
        ]
        if bwrap:
            argv = _bwrap_argv(bwrap, workdir, interpreter, site, root, work_mb) + argv

        def preexec() -> None:  # the namespaces fallback only: bwrap's path runs no Python between fork and exec
            assert libc is not None
            _isolate(libc, workdir.encode(), "mount" in namespaces)

        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        # stdout / stderr: unlinked files outside the working directory, read back through the parent's own fds.
        # Files the program can reach by name would be re-opened here, as root, by a path it controls: a symlink
        # to the run secret (its text in the details), /dev/zero (read until the generator runs out of memory) or
        # a FIFO (the generator blocks in open() forever).
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                argv,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,  # its own process group, killed as one below
                preexec_fn=preexec if libc is not None else None,
                close_fds=True,
                pass_fds=(nonce_r, result_w),
            )
            for fd in (nonce_r, result_w):
                os.close(fd)
                fds.remove(fd)
            try:
                data, returncode = _collect(proc, result_r, t0 + limits.timeout_s)
            finally:
                _kill_group(proc)
            completed, values = _parse_result(data, nonce)
            return SandboxResult(
                returncode=returncode,
                timed_out=returncode is None,
                stdout=_tail(out),
                stderr=_tail(err),
                seconds=time.monotonic() - t0,
                isolation=isolation_tags,
                workdir=workdir,
                completed=completed and returncode is not None,
                values=values if completed else None,
            )
    except (OSError, subprocess.SubprocessError) as e:  # could not start it (fds, memory): no reward, no crash
        return SandboxResult(None, False, "", f"sandbox: {type(e).__name__}: {e}", time.monotonic() - t0, ())
    finally:
        for fd in fds:
            os.close(fd)
        _remove(workdir)


def _remove(workdir: str) -> None:
    """rmtree, and `rm -rf` where the tree is deeper than rmtree's recursion (the fallback's host directory)."""
    try:
        shutil.rmtree(workdir, ignore_errors=True)
    except RecursionError:
        subprocess.run(["rm", "-rf", "--", workdir], stdin=subprocess.DEVNULL, capture_output=True, check=False)


def _claim_uid() -> tuple[int, int]:
    """(uid, lock fd): a uid of SANDBOX_UID_BASE's range (the gid of the same number with it) that no other run of
    this host holds, until the fd is closed. Root only. The lock is an exclusive non-blocking flock on UID_LOCK_DIR/
    <uid>: the kernel drops it with the last fd, so a crashed caller frees its uids. Held, a uid is still skipped
    where an account or group has it, a /etc/subuid or /etc/subgid range covers it, or any process runs as it (a
    killed run's pid namespace still dying, or something that is not a sandbox). None free: OSError, and the run is
    refused (nothing started)."""
    dir_fd = _lock_dir()
    try:
        reserved = _subordinate_ranges()
        for uid in range(SANDBOX_UID_BASE, SANDBOX_UID_BASE + SANDBOX_UID_SLOTS):
            if any(lo <= uid < hi for lo, hi in reserved):
                continue
            fd = os.open(str(uid), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            # Checked only now, while held: no other run can start a process as `uid` after this.
            if _has_account(uid) or _running_as(uid):
                os.close(fd)
                continue
            return uid, fd
    finally:
        os.close(dir_fd)
    raise OSError(
        errno.EAGAIN,
        f"no free sandbox uid in {SANDBOX_UID_BASE}-{SANDBOX_UID_BASE + SANDBOX_UID_SLOTS - 1} "
        f"({SANDBOX_UID_SLOTS} runs at once, or the range is taken by accounts or processes)",
    )


def _lock_dir() -> int:
    """UID_LOCK_DIR, made if missing; refused unless it is a directory of root's that no one else can write."""
    try:
        os.mkdir(UID_LOCK_DIR, 0o700)
    except FileExistsError:
        pass
    fd = os.open(UID_LOCK_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if st.st_uid != 0 or st.st_mode & 0o022:
        os.close(fd)
        raise OSError(errno.EPERM, f"{UID_LOCK_DIR} must be root's and writable by root only")
    return fd


def _has_account(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


def _subordinate_ranges() -> list[tuple[int, int]]:
    """[start, end) of every /etc/subuid and /etc/subgid entry (name:start:count): rootless containers' host uids."""
    out = []
    for path in ("/etc/subuid", "/etc/subgid"):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                out.append((int(parts[1]), int(parts[1]) + int(parts[2])))
    return out


def _running_as(uid: int) -> bool:
    """Any process (zombies too: they count for RLIMIT_NPROC until reaped) with `uid` among its uids or gids."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                status = f.read(2048)
        except OSError:
            continue  # gone
        for line in status.split(b"\n"):
            if line.startswith((b"Uid:", b"Gid:")) and str(uid).encode() in line.split()[1:]:
                return True
    return False


def _collect(proc: subprocess.Popen, result_r: int, deadline: float) -> tuple[bytes, int | None]:
    """Read the harness's result pipe until EOF (every sandbox process gone) or the deadline, then reap."""
    chunks: list[bytes] = []
    size = 0
    poller = select.poll()
    poller.register(result_r, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"", None
        # poll, not select: select() refuses fds from 1024 up (ValueError), and a generator (vLLM, torch, zmq)
        # holds more than that, so every run's pipe was one and every code sample scored 0.
        if not poller.poll(left * 1e3):
            continue
        chunk = os.read(result_r, 65536)
        if not chunk:
            break
        size += len(chunk)
        if size > RESULT_MAX:
            return b"", _wait(proc, deadline)
        chunks.append(chunk)
    return b"".join(chunks), _wait(proc, deadline)


def _wait(proc: subprocess.Popen, deadline: float) -> int | None:
    try:
        return proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None


def _parse_result(data: bytes, nonce: str) -> tuple[bool, list[Any] | None]:
    """(nonce seen, values): "<nonce>\\n<JSON of the tagged values>". The nonce is checked before anything is
    parsed; json.loads builds plain values and runs nothing. Not ast.literal_eval: the nonce is the program's to
    read, and a forged result of 1 MiB (`[{},{},...]`) took it 2-5 s of the generator's CPU and ~550 MB; json.loads
    reads any 1 MiB in tens of milliseconds. Malformed (NaN and Infinity too, which the harness never writes): no
    values."""
    head, sep, body = data.partition(b"\n")
    if not sep or not hmac.compare_digest(head, nonce.encode()):
        return False, None
    try:
        values = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, TypeError, MemoryError, RecursionError):  # UnicodeDecodeError and JSONDecodeError too
        return False, None
    return (True, values) if isinstance(values, list) else (False, None)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not in a harness result")


@functools.lru_cache(maxsize=4)
def _bwrap_has_size(bwrap: str) -> bool:
    """bwrap 0.7 and later: --size for a --tmpfs (Ubuntu 22.04 ships 0.6); a setuid bwrap refuses it."""
    try:
        if os.stat(bwrap).st_mode & stat.S_ISUID:
            return False
        r = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return "--size" in r.stdout + r.stderr


@functools.lru_cache(maxsize=1)
def _numpy_site() -> str | None:
    """The directory holding numpy (and its wheel's numpy.libs), found without importing numpy."""
    spec = importlib.util.find_spec("numpy")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.dirname(list(spec.submodule_search_locations)[0])


def _bwrap_argv(
    bwrap: str, workdir: str, interpreter: str, site: str | None, root: bool, work_mb: int | None = 64
) -> list[str]:
    prefix = os.path.realpath(sys.base_prefix)
    args = [bwrap, "--die-with-parent", "--new-session"]
    if root:
        # No user namespace: one made by root maps the sandbox to host uid 0. The harness drops to the run's uid.
        args += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-all"]
    args += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    real_interp = os.path.realpath(interpreter)
    interp_dir = os.path.dirname(os.path.dirname(real_interp))
    for path in {prefix} | ({interp_dir} if not real_interp.startswith(prefix + "/") else set()):
        if not path.startswith("/usr/"):
            args += _dirs_above(path) + ["--ro-bind", path, path]
    if site:
        args += ["--perms", "0755", "--dir", SITE]  # made by root; the run's uid must be able to list it
        args += ["--ro-bind", os.path.join(site, "numpy"), f"{SITE}/numpy"]
        libs = os.path.join(site, "numpy.libs")
        if os.path.isdir(libs):
            args += ["--ro-bind", libs, f"{SITE}/numpy.libs"]
    # /, /dev, /dev/shm and /tmp are tmpfs mounts. As root they are root's 0755 and the run's uid cannot write them; not
    # root they are the caller's, writable and bounded by nothing (a tmpfs takes up to half the RAM), past
    # RLIMIT_FSIZE per file and work_mb. Remounted read-only at the end (the working directory's mountpoint is made
    # in /tmp first): for both users nothing is writable but the working directory, and chmod fails with EROFS.
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm", "--tmpfs", "/tmp"]
    if work_mb is None:  # bwrap before 0.7: the host's directory (each file bounded by RLIMIT_FSIZE, not their number)
        args += ["--bind", workdir, workdir]
    else:
        # The program's one writable place: a tmpfs of work_mb at the working directory's path, gone with the mount
        # namespace; nothing it writes reaches the host's disk or the directory the parent removes.
        args += ["--perms", "1777", "--size", str(work_mb * 1024 * 1024), "--tmpfs", workdir]
        for name in ("main.py", "steps.txt"):
            args += ["--ro-bind", os.path.join(workdir, name), os.path.join(workdir, name)]
    for private in ("/dev/shm", "/tmp", "/dev", "/"):  # not recursive: the working directory's mount stays writable
        args += ["--remount-ro", private]
    args += ["--chdir", "/", "--"]
    return args


def _dirs_above(path: str) -> list[str]:
    """bwrap makes a bind's missing parents 0700 and root's: the run's uid could not reach the stdlib under them."""
    out: list[str] = []
    parts = Path(path).parts[1:-1]
    for i in range(len(parts)):
        out += ["--perms", "0755", "--dir", "/" + "/".join(parts[: i + 1])]
    return out


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group: bwrap (its pid namespace dies with it, --die-with-parent) or the fallback's
    interpreter; then reap the leader."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _tail(f: Any) -> str:
    """The last OUTPUT_TAIL bytes the program wrote to `f` (an fd the parent holds; never re-opened by name)."""
    try:
        size = os.fstat(f.fileno()).st_size
        return os.pread(f.fileno(), OUTPUT_TAIL, max(0, size - OUTPUT_TAIL)).decode("utf-8", "replace")
    except OSError:
        return ""
