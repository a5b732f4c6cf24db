"""The `math` verifier: symbolic equivalence through Hugging Face's math-verify (the `math` extra).

GSM8K, MATH and AIME answers need more than numbers: "\\frac{\\sqrt3}{2}", "(x+1)^2" against "x^2+2x+1", intervals,
percentages. math-verify parses both sides into sympy and compares them, as TRL's accuracy reward does.

The gold answer may be a bare answer ("72", "\\frac{1}{2}"), a worked solution with a `\\boxed{}` (MATH's
`solution` field), or GSM8K's "reasoning #### 72"; a completion is read the same way (its last `\\boxed{}` first).
No torch here.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from scalerl.shared.tasks.types import TaskError, VerifyResult

MISSING = "verifier 'math' needs the math-verify package: pip install 'scalerl[math]'"
GSM8K_MARK = "####"
MAX_PARSED_CHARS = 64


def require_math_verify() -> None:
    """TaskError (one line, naming the extra) when math-verify is not installed."""
    try:
        import math_verify  # noqa: F401
    except ImportError:
        raise TaskError(MISSING) from None


def _timeout() -> int | None:
    # math-verify's timeouts are SIGALRM-based, which only the main thread may set; elsewhere no timeout at all
    # (a generator scores in its main thread, so this matters for library callers only).
    return 5 if threading.current_thread() is threading.main_thread() else None


def _text(answer: str) -> str:
    head, mark, tail = answer.rpartition(GSM8K_MARK)
    return tail.strip() if mark else answer


@functools.lru_cache(maxsize=65536)
def _parse_gold(answer: str) -> tuple[Any, ...]:
    from math_verify import parse

    text = _text(answer)
    timeout = _timeout()
    # A bare answer is LaTeX without delimiters: "$...$" makes math-verify read "\\frac{\\sqrt3}{2}" or "(1,2)" as
    # maths instead of finding nothing; boxed or already-delimited text is read as it is.
    if "\\boxed" not in text and "$" not in text:
        parsed = parse(f"${text}$", parsing_timeout=timeout)
        if parsed:
            return tuple(parsed)
    return tuple(parse(text, parsing_timeout=timeout))


def math_match(completion: str, answer: str) -> VerifyResult:
    """Reward 1 when the completion's final answer is mathematically equal to the gold answer."""
    from math_verify import parse, verify

    timeout = _timeout()
    gold = _parse_gold(answer)
    if not gold:
        raise ValueError(f"math-verify cannot read the gold answer {answer[:MAX_PARSED_CHARS]!r}")
    found = parse(_text(completion), parsing_timeout=timeout)
    if not found:
        return 0.0, {"correct": False, "has_answer": False, "parsed": ""}
    correct = bool(verify(list(gold), found, timeout_seconds=timeout))
    return float(correct), {"correct": correct, "has_answer": True, "parsed": str(found[-1])[:MAX_PARSED_CHARS]}
