"""Writing the run directory (docs/run-dir.md): atomic files and an append-only metrics log."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from scalerl.shared.config import ConfigError


def check_fresh(run_dir: Path, resume: bool) -> None:
    """Refuse to start a fresh run over an existing one: nothing already written may be lost or mixed.

    An empty metrics.jsonl (a start that failed before its first evaluation) holds nothing to protect.
    """
    metrics = Path(run_dir) / "metrics.jsonl"
    if not resume and metrics.exists() and metrics.stat().st_size > 0:
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another run dir")


def atomic_write_text(path: Path, text: str) -> None:
    """Write-then-rename: a reader (or a crash) sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        for key in ("kind", "step", "gpu_hours", "time_s"):
            if key not in record:
                raise ValueError(f"metrics record lacks {key!r}")
        self._f.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    @staticmethod
    def truncate_after(path: Path, step: int) -> int:
        """Drop lines of steps after `step` (work a resumed run will redo), and a partial last line.

        Returns the number of lines dropped. This is what keeps a kill-and-resume free of duplicated steps.
        """
        path = Path(path)
        if not path.exists():
            return 0
        kept, dropped = [], 0
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if int(rec.get("step", 0)) > step:
                dropped += 1
            else:
                kept.append(line)
        atomic_write_text(path, "".join(k + "\n" for k in kept))
        return dropped
