"""The plain-Python part of the wire format (scalar types, sampling limits, error texts), which configs and tasks
share with the messages: no numpy here, so that loading a config (and `scalerl --help`) does not import it."""

from __future__ import annotations

import math
import reprlib
from typing import Any, Union

Scalar = Union[bool, int, float, str]
Details = dict[str, Scalar]


class _ShortRepr(reprlib.Repr):
    """repr() bounded in depth, length and size: values from the wire go into one-line errors and logs, and a
    peer's 64 MiB list or 1000-deep nesting must neither make a 70 MB log line nor raise RecursionError."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother, self.maxlong = 3, 60, 60, 40
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdict = self.maxarray = 8

    def repr_bytes(self, x: bytes, level: int) -> str:
        return repr(x) if len(x) <= 40 else f"{x[:40]!r}... ({len(x)} bytes)"


_SHORT_REPR = _ShortRepr()


def show(v: Any) -> str:
    """A short one-line repr of a value that came off the wire (for error texts)."""
    return _SHORT_REPR.repr(v).replace("\n", " ")


def sampling_problem(
    temperature: object = 1.0,
    top_p: object = 1.0,
    max_new_tokens: object = 1,
    thinking_budget: object = None,
    answer_budget: object = None,
) -> str | None:
    """The one check of sampling limits, shared by the wire message, the generator config and every engine.

    thinking_budget is None, one number (the wire) or a (min, max) range (config and engines). Returns None when
    the values are acceptable, else a one-line problem that names the field.
    """
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        return f"temperature must be finite and >= 0, got {show(temperature)}"
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        return f"top_p must be in (0, 1], got {show(top_p)}"
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        return f"max_new_tokens must be an int >= 1, got {show(max_new_tokens)}"
    b = thinking_budget
    if isinstance(b, (list, tuple)):
        if not (len(b) == 2 and all(isinstance(x, int) for x in b) and 0 <= b[0] <= b[1]):
            return f"thinking_budget must be [min, max] with 0 <= min <= max, got {show(list(b))}"
    elif b is not None and (not isinstance(b, int) or b < 0):
        return f"thinking_budget must be an int >= 0, got {show(b)}"
    if answer_budget is not None and (not isinstance(answer_budget, int) or answer_budget < 1):
        return f"answer_budget must be an int >= 1 or None, got {show(answer_budget)}"
    return None
