"""Progress of a run: a rich live view on a terminal, plain log lines otherwise (slurm logs)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live
from rich.table import Table

if TYPE_CHECKING:
    from rich.progress import TaskID

# `scalerl train` warns once when more than this share of at least VERIFIER_MIN_SAMPLES samples failed to verify.
VERIFIER_ERROR_RATE = 0.05
VERIFIER_MIN_SAMPLES = 50


def verifier_error_rate(records: list[dict]) -> tuple[float, int]:
    """(share of samples whose verifier raised, samples seen) over the run's train lines so far."""
    train = [r for r in records if r.get("kind") == "train"]
    samples = sum(r.get("samples", 0) for r in train)
    errors = sum(r.get("verifier_errors", 0) for r in train)
    return (errors / samples if samples else 0.0), samples


def summary(records: list[dict], max_steps: int, t_start: float) -> dict:
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    # A multi-task run writes one eval line per task; the one-line view follows the first task (scalerl fit: each).
    evals = [r for r in evals if r.get("task") == evals[0].get("task")] if evals else evals
    last = train[-1] if train else {}
    step = last.get("step", 0)
    recent = train[-20:]
    dt = (recent[-1]["time_s"] - recent[0]["time_s"]) if len(recent) > 1 else 0.0
    tok_s = sum(r.get("tokens", 0) for r in recent[1:]) / dt if dt > 0 else 0.0
    steps_s = (len(recent) - 1) / dt if dt > 0 else 0.0
    eta = (max_steps - step) / steps_s if steps_s > 0 else float("nan")
    return {
        "step": step,
        "max_steps": max_steps,
        "pass_rate": evals[-1]["pass_rate"] if evals else float("nan"),
        "pass_rate_0": evals[0]["pass_rate"] if evals else float("nan"),
        "reward": last.get("reward_mean", float("nan")),
        "tok_s": tok_s,
        "staleness": last.get("staleness_mean", float("nan")),
        "gpu_hours": last.get("gpu_hours", 0.0),
        "eta_s": eta,
        "elapsed_s": time.monotonic() - t_start,
    }


def _forecast_text(s: dict) -> str:
    from .live_forecast import describe

    return describe(s.get("forecast"))


def _table(s: dict) -> Table:
    t = Table(title="scalerl train", show_header=True, caption=f"forecast: {_forecast_text(s)}")
    for col in ("step", "held-out pass rate", "reward", "tokens/s", "staleness", "GPU-hours", "ETA"):
        t.add_column(col)
    eta = "-" if s["eta_s"] != s["eta_s"] else f"{s['eta_s'] / 60:.1f} min"
    t.add_row(
        f"{s['step']}/{s['max_steps']}",
        f"{s['pass_rate']:.3f} (start {s['pass_rate_0']:.3f})",
        f"{s['reward']:.3f}",
        f"{s['tok_s']:.0f}",
        f"{s['staleness']:.2f}",
        f"{s['gpu_hours']:.4f}",
        eta,
    )
    return t


class Progress:
    """Call update() often; it redraws a live table on a TTY, or logs a line every `every_s` seconds."""

    def __init__(self, every_s: float = 30.0):
        self.tty = sys.stderr.isatty()
        self.every_s = every_s
        self.last = 0.0
        self.live = Live(console=Console(stderr=True), auto_refresh=False) if self.tty else None
        if self.live:
            self.live.start()

    def update(self, s: dict) -> None:
        if self.live:
            self.live.update(_table(s), refresh=True)
        elif time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            print(
                f"step {s['step']}/{s['max_steps']} pass_rate {s['pass_rate']:.3f} reward {s['reward']:.3f} "
                f"tok/s {s['tok_s']:.0f} staleness {s['staleness']:.2f} gpu_hours {s['gpu_hours']:.4f} "
                f"forecast: {_forecast_text(s)}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.live:
            self.live.stop()


class BuildProgress:
    """The first run's warm start of the built-in model (~6 minutes): a rich bar per phase on a terminal, a log
    line at most every `every_s` seconds otherwise. Called as progress(phase, step, max_steps, rate)."""

    def __init__(self, every_s: float = 30.0, who: str = "scalerl train"):
        self.who = who
        self.tty = sys.stderr.isatty()
        self.every_s, self.last = every_s, 0.0
        self.bar = None
        self.tasks: dict[str, TaskID] = {}
        if self.tty:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("step {task.completed:.0f}/{task.total:.0f}  rate {task.fields[rate]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self.bar.start()

    def __call__(self, phase: str, step: int, max_steps: int, rate: float) -> None:
        if self.bar is not None:
            if phase not in self.tasks:
                self.tasks[phase] = self.bar.add_task(f"warm start: {phase}", total=max_steps, rate="-")
            self.bar.update(self.tasks[phase], completed=step, rate=f"{rate:.3f}")
            return
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            print(
                f"{self.who}: warm start, {phase}: step {step} (at most {max_steps}), rate {rate:.3f}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@contextmanager
def terminate_as_exit() -> Iterator[None]:
    """Inside the block SIGTERM raises SystemExit(143), so that finally blocks run (the tiny model's half-built cache
    directory is removed by one); Python's default action ends the process before they can."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def prepare_tiny_model(task, who: str) -> Path:
    """The built-in tiny model for `task`, built on first use (about 6 minutes) with its progress on stderr."""
    from scalerl.shared.models.tiny_model import ensure_tiny_model, tiny_model_cached

    if not tiny_model_cached(task=task):
        print(f"{who}: preparing the built-in tiny model (cached after the first run)", file=sys.stderr, flush=True)

    progress = BuildProgress(who=who)
    try:
        with terminate_as_exit():
            return ensure_tiny_model(task=task, progress=progress)
    finally:
        progress.close()
