"""Writing the run directory (docs/run-dir.md): atomic files and an append-only metrics log."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scalerl.shared.config import ConfigError

# ENOSPC reaches us as OSError from Python's own writes, as text inside a SafetensorError, or (torch.save to a
# path) as "unexpected pos" from torch's zip writer, which says nothing about the disk.
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")


class RunDirError(ConfigError):
    """The run directory cannot be used as asked (disk full, nothing to resume): one line naming the path, exit 2."""


def write_error(path: Path, e: BaseException) -> RunDirError | None:
    """The one-line error for a failed write of `path`, or None when `e` is not about the file system."""
    if isinstance(e, RunDirError):
        return e
    text = str(e).lower()
    if (isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS) or any(t in text for t in _DISK_FULL_TEXT):
        return RunDirError(f"no space left on device: {path}")
    if "unexpected pos" in text and _disk_is_full(Path(path)):
        return RunDirError(f"no space left on device: {path}")
    if isinstance(e, OSError):
        return RunDirError(f"cannot write {path}: {e.strerror or e}")
    return None


def _disk_is_full(path: Path) -> bool:
    for p in (path, *path.parents):
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize < 1 << 20
    return False


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a file-system failure while writing `path` into a RunDirError that names it."""
    try:
        yield
    except Exception as e:
        mapped = write_error(path, e)
        if mapped is None or mapped is e:
            raise
        raise mapped from e


def check_fresh(run_dir: Path, resume: bool) -> None:
    """Refuse to start a fresh run over an existing one: nothing already written may be lost or mixed.

    An empty metrics.jsonl (a start that failed before its first evaluation) holds nothing to protect.
    """
    metrics = Path(run_dir) / "metrics.jsonl"
    if not resume and metrics.exists() and metrics.stat().st_size > 0:
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another run dir")


def holds_run(run_dir: Path) -> bool:
    """Whether `run_dir` is an existing run dir to keep, as opposed to none, or one holding nothing but a .lock: what a
    start killed (kill -9) after RunLock took its lock and before it wrote anything leaves. A later start treats that
    as new, so that a stop or a refusal before its own start removes it again. An empty dir counts as existing: a
    user may have made it for the run, and it holds nothing to lose either way. A live owner's bare .lock is safe to
    count as new: RunLock refuses the start, and nothing removes a dir locked by another process. One that cannot be
    listed (no permission, a name too long) counts as existing: what it holds is unknown, so it is never removed."""
    from scalerl.shared.ownership import LOCK_NAME

    try:
        return {p.name for p in Path(run_dir).iterdir()} != {LOCK_NAME}
    except FileNotFoundError:
        return False
    except OSError:  # a file (refused as a run dir), or a dir this process cannot list: never removed
        return True


def current_umask() -> int:
    try:  # Linux says it without changing it (other threads may be creating files)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere os.umask is the only way to read it: set and put back at once
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write-then-rename: a reader (or a crash) sees the old file or the new one, never half of one."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            # mkstemp makes the file 0600: status.json and config.toml must read as any file the user writes does (a
            # teammate's `scalerl status` on a shared run dir could not read them). The secret is written elsewhere.
            os.fchmod(fd, 0o666 & ~current_umask())
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class MetricsLog:
    """metrics.jsonl: one JSON object per line, flushed as written so `scalerl fit` can read a live run."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        for key in ("kind", "step", "gpu_hours", "time_s"):
            if key not in record:
                raise ValueError(f"metrics record lacks {key!r}")
        with writing(self.path):
            self._f.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._f.flush()

    def close(self) -> None:
        with writing(self.path):
            self._f.close()

    @staticmethod
    def truncate_after(path: Path, step: int) -> int:
        """Drop lines of steps after `step` (work a resumed run will redo), and torn lines.

        `step` is the checkpoint actually loaded (-1 drops everything: a start from scratch). Returns the number
        of lines dropped. This is what keeps a kill-and-resume free of duplicated steps.
        """
        path = Path(path)
        if not path.exists():
            return 0
        kept, dropped = [], 0
        for _, line, rec in _parse_lines(path):
            if rec is None or _step_of(rec) > step:
                dropped += 1
            else:
                kept.append(line)
        atomic_write_text(path, "".join(k + "\n" for k in kept))
        return dropped

    @staticmethod
    def check(path: Path, step: int, eval_every: int | None = None) -> list[str]:
        """What a resume from `step` would otherwise hide: torn lines, and steps up to `step` with no line.

        One message per problem, naming the file and line; a resume still proceeds (the checkpoint is intact,
        only the curve has a hole), so these are warnings.
        """
        path = Path(path)
        lines = list(_parse_lines(path)) if path.exists() else []
        out: list[str] = []
        train: set[int] = set()
        evals: set[int] = set()
        # Per kind: an eval line scored by the evaluator process is written late, with the time of its step.
        last_time: dict[str, tuple[float, int]] = {}
        last_n = lines[-1][0] if lines else 0
        for n, _, rec in lines:
            if rec is None:
                where = "the last line, cut short by a kill" if n == last_n else "inside the file"
                out.append(f"{path}:{n}: torn line ({where}), dropped")
                continue
            s = _step_of(rec)
            if s > step:
                continue
            if rec.get("kind") == "train":
                train.add(s)
            elif rec.get("kind") == "eval":
                evals.add(s)
            t, kind = rec.get("time_s"), str(rec.get("kind"))
            if isinstance(t, (int, float)):
                before, before_line = last_time.get(kind, (float("-inf"), 0))
                if t < before:
                    out.append(f"{path}:{n}: time_s {t:g} runs backwards (line {before_line} has {before:g})")
                last_time[kind] = (float(t), n)
        missing = [s for s in range(1, step + 1) if s not in train]
        if missing:
            out.append(
                f"{path}: no train line for step(s) {_ranges(missing)} up to the checkpoint at step {step}: "
                "the curve has a gap there"
            )
        if eval_every:
            missing = [s for s in range(0, step + 1, eval_every) if s not in evals]
            if missing:
                out.append(f"{path}: no eval line for step(s) {_ranges(missing)} (eval_every = {eval_every})")
        return out


def _parse_lines(path: Path) -> Iterator[tuple[int, str, dict | None]]:
    """(1-based line number, text, record or None when the line is torn) for each non-empty line."""
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        yield n, line, rec if isinstance(rec, dict) else None


def _step_of(rec: dict) -> int:
    try:
        return int(rec.get("step", 0))
    except (TypeError, ValueError):
        return 0


def _ranges(steps: list[int], most: int = 6) -> str:
    spans: list[list[int]] = []
    for s in steps:
        if spans and s == spans[-1][1] + 1:
            spans[-1][1] = s
        else:
            spans.append([s, s])
    text = [f"{a}-{b}" if a != b else str(a) for a, b in spans[:most]]
    return ", ".join(text) + (", ..." if len(spans) > most else "")
