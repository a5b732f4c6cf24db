"""Signals: what the operating system asked the trainer to do, read by the loop between steps."""

from __future__ import annotations

import signal

EXIT_SIGINT, EXIT_SIGTERM = 130, 143


class Signals:
    """SIGTERM / SIGINT set `stop` to the exit code (checkpoint, then stop); SIGUSR1 sets `checkpoint_now`
    (slurm's preemption warning: checkpoint and go on). Handlers only set flags: the loop acts at a safe point."""

    def __init__(self) -> None:
        self.stop: int | None = None
        self.checkpoint_now = False

    def install(self) -> Signals:
        for sig, code in ((signal.SIGTERM, EXIT_SIGTERM), (signal.SIGINT, EXIT_SIGINT)):
            signal.signal(sig, lambda *_, c=code: setattr(self, "stop", c))
        signal.signal(signal.SIGUSR1, lambda *_: setattr(self, "checkpoint_now", True))
        return self

    @staticmethod
    def ignore_stops() -> None:
        """Other ranks: torchrun signals every rank, and rank 0 checkpoints and then orders the stop."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)

    @property
    def stop_name(self) -> str:
        return signal.Signals(self.stop - 128).name if self.stop is not None else ""
