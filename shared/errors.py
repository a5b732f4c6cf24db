"""How every scalerl process reports a failure: one line that names the offender."""

from __future__ import annotations


def one_line(e: BaseException | str) -> str:
    """The message of `e` with its whitespace (newlines from nested errors included) collapsed to single spaces."""
    return " ".join(str(e).split())
