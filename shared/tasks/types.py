"""The task vocabulary every other task module speaks: one problem, one verdict, one input error.

Kept apart so that data files, verifiers and the task catalog import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from scalerl.shared.wire.values import Details

__all__ = ["TaskItem", "TaskError", "VerifyResult", "Verifier"]


@dataclass(frozen=True)
class TaskItem:
    """One problem. `meta` holds extra fields: "solution" is a reference completion
    (used for the supervised warm start), JSONL lines put their other keys here."""

    id: str
    prompt: str
    answer: str
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    where: str = field(default="", compare=False, hash=False)  # "file:line" for items read from a file


VerifyResult = tuple[float, Details]
# A task's verifier: gets the completion text and the item (anything with .answer).
Verifier = Callable[[str, Any], VerifyResult]


class TaskError(ValueError):
    """Bad task input (data file, line, option or verifier spec); the message is one line."""
