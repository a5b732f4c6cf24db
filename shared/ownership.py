"""One live owner per run directory, and children that die with their parent.

The owner holds an exclusive `fcntl.flock` on RUN/.lock for its whole life. The kernel releases the lock on any
death, kill -9 included, so a stale lock file never blocks `--resume`. `scalerl train` takes the lock before it
writes anything and hands the open lock file to the trainer it spawns (same open file description, so the lock is
shared, not re-taken); a standalone `scalerl trainer` takes it itself.

Children of `scalerl train` ask the kernel for SIGTERM when their parent dies (PR_SET_PDEATHSIG) and also watch
their parent pid, which covers the instant between fork and prctl and platforms without prctl.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from scalerl.shared.config import ConfigError

LOCK_NAME = ".lock"
SECRET_NAME = ".secret"  # the per-run secret generators present in their handshake (mode 0600)
LOCK_FD_ENV = "SCALERL_RUN_LOCK_FD"  # an inherited, already locked lock file (set by `scalerl train`)
PARENT_ENV = "SCALERL_PARENT_PID"  # the supervisor's pid: a child that outlives it stops
_PR_SET_PDEATHSIG = 1


class RunDirBusy(ConfigError):
    """Another live process owns the run directory (exit 2)."""


class RunLock:
    """The exclusive lock on one run directory; `fd` stays open (and locked) until `release` or process death."""

    def __init__(self, run_dir: Path, fd: int):
        self.run_dir, self.fd = Path(run_dir), fd

    @classmethod
    def acquire(cls, run_dir: Path, role: str) -> RunLock:
        """Take the lock or raise RunDirBusy naming the owner's pid and host. Creates the run dir if needed."""
        run_dir = Path(run_dir)
        inherited = _inherited_fd(run_dir)
        if inherited is not None:
            return cls(run_dir, inherited)
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise RunDirBusy(
                f"{run_dir} is in use by {owner.get('role', 'another process')} (pid {owner.get('pid', '?')} on "
                f"host {owner.get('host', '?')}); stop it first, or choose another run dir"
            ) from None
        os.ftruncate(fd, 0)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "role": role, "since": time.time()}
        os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
        return cls(run_dir, fd)

    def child_env(self) -> tuple[dict[str, str], tuple[int, ...]]:
        """Environment and pass_fds that let a child process share this lock."""
        return {LOCK_FD_ENV: str(self.fd), PARENT_ENV: str(os.getpid())}, (self.fd,)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last descriptor of the open file releases the flock
            self.fd = -1


def owner_of(run_dir: Path) -> dict | None:
    """The live owner's record, or None when nobody holds the lock (for `scalerl status` and error messages)."""
    path = Path(run_dir) / LOCK_NAME
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_owner(fd)
        return None
    finally:
        os.close(fd)


def _inherited_fd(run_dir: Path) -> int | None:
    raw = os.environ.get(LOCK_FD_ENV)
    if not raw:
        return None
    try:
        fd = int(raw)
        same = os.path.samestat(os.fstat(fd), os.stat(run_dir / LOCK_NAME))
    except (ValueError, OSError):
        return None
    if not same:
        return None
    os.set_inheritable(fd, False)
    # flock on the shared open file description succeeds at once: the lock is already ours.
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _read_owner(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------- parent death


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child (preexec_fn): the kernel sends `sig` when the parent dies. A no-op where prctl is missing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return


def parent_gone() -> bool:
    """True when this process was started by a supervisor (PARENT_ENV) that no longer is its parent."""
    raw = os.environ.get(PARENT_ENV)
    if not raw:
        return False
    return os.getppid() != int(raw)


def read_secret(path: str | Path, wait_s: float = 0.0) -> str:
    """The run secret from `path` ("" when path is ""), waiting up to `wait_s` for it to appear: a generator may
    start before the trainer (or `scalerl train`) has created it. A missing or unreadable secret is a config error
    naming the file."""
    if not path:
        return ""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            token = Path(path).read_text().strip()
        except FileNotFoundError:
            if time.monotonic() >= deadline:
                raise ConfigError(f"the run secret {path} does not exist (is the trainer's run dir shared?)") from None
            time.sleep(0.2)
        except OSError as e:
            raise ConfigError(f"cannot read the run secret {path}: {e.strerror}") from None
        else:
            if not token:
                raise ConfigError(f"the run secret {path} is empty{_SECRET_HINT}")
            return token


_SECRET_LEN = 64  # token_hex(32)
_SECRET_HINT = (
    " (a start killed or a disk full while writing it?); it is not replaced while generators may hold the old one:"
    " stop the run's processes, delete it and start again"
)


def ensure_secret(run_dir: Path) -> Path:
    """The run's shared secret (mode 0600): generators prove with it that they belong to this run. Kept across
    resumes, so restarted generators still authenticate.

    Written whole or not at all: the token goes to a temp file, is synced, and is linked to .secret, which fails
    if one exists (a start beside this one made it first), so a kill or a full disk never leaves an empty secret.
    One that is empty all the same (an older version's crash) is refused here, naming it, before any process
    starts. (Any other content is the run's secret: a user may have written their own.)"""
    path = Path(run_dir) / SECRET_NAME
    if not path.exists():
        _create_secret(path)
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the run secret {path}: {e.strerror}") from None
    if not token:  # what a crash between creating and writing it left (one write: it is never half there)
        raise ConfigError(f"the run secret {path} is empty{_SECRET_HINT}")
    return path


def _create_secret(path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{SECRET_NAME}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(_SECRET_LEN // 2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and refuses an existing name as O_EXCL did
        except FileExistsError:
            return
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                raise
            _create_secret_exclusive(path, Path(tmp).read_text())  # a file system without hard links
            return
        _fsync_dir(path.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _create_secret_exclusive(path: Path, token: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)  # never an empty or partial secret left behind
        raise


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse a directory fsync; the link itself is already atomic
    finally:
        os.close(fd)
