"""How every scalerl process reports a failure: one line that names the offender."""

from __future__ import annotations

import logging
import time
from typing import Callable


def one_line(e: BaseException | str) -> str:
    """The message of `e` with its whitespace (newlines from nested errors included) collapsed to single spaces."""
    return " ".join(str(e).split())


class Throttle:
    """At most one line per `every_s` for a problem that may recur on every sample; the next line it lets through
    says how many were held back, so a flood costs one log line per interval and nothing is silently lost."""

    def __init__(self, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.every_s, self.clock = every_s, clock
        self._last: float | None = None
        self.suppressed = 0

    def allow(self) -> tuple[bool, int]:
        """(whether to log now, how many were held back since the last line)."""
        now = self.clock()
        if self._last is not None and now - self._last < self.every_s:
            self.suppressed += 1
            return False, 0
        held, self.suppressed, self._last = self.suppressed, 0, now
        return True, held


class ThrottledWarning:
    """A warning logged through a Throttle: `warn(fmt, *args)` logs at most once per `every_s`, the line it lets
    through ending with how many were held back. The one helper for every 'rejected'/'dropped' line that a peer
    (or garbage from any process) could otherwise repeat per message."""

    def __init__(self, logger: logging.Logger, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.logger, self.throttle = logger, Throttle(every_s, clock)

    def __call__(self, fmt: str, *args: object) -> bool:
        """Log `fmt % args` unless held back; True if logged."""
        now, held = self.throttle.allow()
        if now:
            self.logger.warning(fmt + "%s", *args, f" (+{held} more since the last line)" if held else "")
        return now
