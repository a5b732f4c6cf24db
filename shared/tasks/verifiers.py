"""Verifiers: turn a completion into a reward and a few msgpack-safe details.

Built-in verifiers are functions of (completion, answer). A task picks one by name ("exact", "numeric", "math"
through math-verify, "code" through the sandbox) or by "module:function"; `make_verifier` wraps it into the
uniform `(completion, item) -> (reward, details)` form, applies the task's final-answer
delimiter, and turns exceptions or bad return values into reward 0 with the error in
the details, because one odd completion must never stop a generator.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import math
import numbers
import re
from fractions import Fraction
from typing import Any, Callable, Iterable

from scalerl.shared.errors import Throttle
from scalerl.shared.tasks.types import TaskError, Verifier, VerifyResult

log = logging.getLogger(__name__)

# A sign counts only when it does not follow a digit, so "10-4" yields 10 and 4, not -4.
_NUMBER = re.compile(r"(?:(?<!\d)[-+])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")
_FRAC = re.compile(r"^([-+]?)\\d?frac\{([^{}]+)\}\{([^{}]+)\}$")


def after_delimiter(text: str, delimiter: str) -> str | None:
    """The text after the last `delimiter`, or None if it does not occur."""
    head, sep, tail = text.rpartition(delimiter)
    return tail if sep else None


def last_number(text: str) -> str | None:
    """The last number written in `text` ("1,234", "-3.5", "3/4"), or None."""
    found = _NUMBER.findall(text)
    return found[-1] if found else None


def last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...}, braces matched; None if absent or unbalanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return text[begin:i]
            depth -= 1
    return None


def parse_number(text: str) -> Fraction | None:
    """Exact value of "42", "-3.50", "1,234", "3/4", "\\frac{3}{4}", "$5"; None otherwise."""
    s = text.strip().strip("$").replace(" ", "").replace("\\!", "")
    frac = _FRAC.match(s)
    if frac:
        s = f"{frac.group(1)}{frac.group(2)}/{frac.group(3)}"
    if not _NUMBER.fullmatch(s):
        return None
    try:
        return Fraction(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def exact_match(completion: str, answer: str) -> VerifyResult:
    """Reward 1 when the completion is the answer, surrounding whitespace ignored."""
    parsed = completion.strip()
    correct = parsed == answer.strip()
    return float(correct), {"correct": correct, "has_answer": bool(parsed), "parsed": parsed[:64]}


def numeric_match(completion: str, answer: str) -> VerifyResult:
    """Reward 1 when the last \\boxed{} (else the last number) equals the answer's value.

    Values compare exactly as fractions, so "0.5", "1/2" and "\\frac{1}{2}" all match "1/2".
    An answer that is not a number is compared as text with spaces and "$" removed. A GSM8K answer ("reasoning
    #### 72") counts by what follows its "####", as the `math` verifier reads it, so GSM8K files work without
    math-verify installed.
    """
    if "####" in answer:
        answer = answer.rpartition("####")[2].strip()
    boxed = last_boxed(completion)
    candidate = boxed if boxed is not None else last_number(completion)
    if candidate is None:
        return 0.0, {"correct": False, "has_answer": False, "parsed": ""}
    want = parse_number(answer)
    if want is not None:
        correct = parse_number(candidate) == want
    else:
        correct = _squash(candidate) == _squash(answer)
    return float(correct), {"correct": correct, "has_answer": True, "parsed": candidate[:64]}


def _squash(text: str) -> str:
    return text.replace(" ", "").strip("$")


def _math(completion: str, answer: str) -> VerifyResult:
    from scalerl.shared.tasks.math_verifier import math_match  # math-verify (and sympy) only for tasks that use it

    return math_match(completion, answer)


def _code(completion: str, answer: str) -> VerifyResult:
    from scalerl.shared.tasks.code_verifier import code_match

    return code_match(completion, answer)


BUILTIN_VERIFIERS: dict[str, Callable[[str, str], VerifyResult]] = {
    "exact": exact_match,
    "numeric": numeric_match,
    "math": _math,
    "code": _code,
}


# How many answers `answers_problem` reads: answers of another kind fail on every one, while a dataset with a few
# broken tests still has most that parse (those items score 0, the run goes on).
ANSWER_SAMPLE = 32


def answers_problem(spec: str, answers: Iterable[str]) -> str | None:
    """Why a task's answers are not what verifier `spec` checks against, or None. Only `code` asks a form of them
    (test code with asserts): with none of the first ANSWER_SAMPLE parsing as tests (the built-in tasks' numbers),
    every sample would score 0 with a verifier error, a run or an eval that measures nothing."""
    if spec != "code":
        return None  # exact, numeric and math compare with any text; a module:function reads the item its own way
    from scalerl.shared.tasks.code_verifier import compile_tests

    first: tuple[str, str] | None = None
    for answer in itertools.islice(answers, ANSWER_SAMPLE):
        try:
            compile_tests(answer)
            return None
        # Not only TaskError: an answer too deep for the parser (`assert ----...1`) raises MemoryError or
        # RecursionError, which made train and eval stop with an internal error instead of this check's answer.
        except Exception as e:
            first = first or (answer, str(e) if isinstance(e, TaskError) else f"{type(e).__name__} parsing it")
    if first is None:
        return None  # no items: the task's own checks say so
    answer, error = first
    return f"its answers are not test code (answer {answer[:40]!r}: {error})"


def check_verifier_fits(task: Any, label: str) -> None:
    """TaskError naming the verifier and the task `label` when the task's answers do not fit its verifier
    (`answers_problem`): `scalerl eval` and `scalerl train` (cli/run_setup.py check_inputs) refuse it before any
    model is built, with exit 2."""
    items = itertools.chain(task.val_items, task.train_items)
    problem = answers_problem(task.verifier, (item.answer for item in items))
    if problem is not None:
        raise TaskError(f"verifier {task.verifier!r} does not fit task {label!r}: {problem}")


def resolve_verifier(spec: str) -> Verifier:
    """The (completion, item) function named by `spec`: a built-in name or "module:function".

    A "module:function" verifier gets the item itself (id, prompt, answer, meta) and may
    return a bool, a number, or (reward, details).
    """
    if spec in BUILTIN_VERIFIERS:
        if spec == "math":  # a missing extra is a bad spec now, not reward 0 on every sample later
            from scalerl.shared.tasks.math_verifier import require_math_verify

            require_math_verify()
        if spec == "code":  # without a working bubblewrap model code would run as the caller: refuse now (exit 2)
            from scalerl.shared.tasks.code_verifier import require_code_sandbox

            require_code_sandbox()
        builtin = BUILTIN_VERIFIERS[spec]
        return lambda completion, item: builtin(completion, item.answer)
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        known = ", ".join(sorted(BUILTIN_VERIFIERS))
        raise TaskError(f"verifier {spec!r}: not one of {known} and not 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure is a bad spec, reported on one line
        raise TaskError(f"verifier {spec!r}: cannot import {module_name!r}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise TaskError(f"verifier {spec!r}: {module_name!r} has no callable {attr!r}")
    return fn


def make_verifier(spec: str, delimiter: str | None = None) -> Verifier:
    """The task-level verifier: delimiter handling, result checks, never raises."""
    fn = resolve_verifier(spec)
    throttle = Throttle()

    def verify(completion: str, item: Any) -> VerifyResult:
        text = completion
        if delimiter:
            after = after_delimiter(completion, delimiter)
            if after is None:
                return 0.0, {"correct": False, "has_answer": False, "parsed": "", "has_delimiter": False}
            text = after
        try:
            reward, details = normalize_result(fn(text, item))
        except Exception as exc:  # a verifier bug costs this sample its reward, not the service
            now, held = throttle.allow()
            if now:
                log.warning(
                    "verifier %s failed on item %r: %s: %s%s",
                    spec,
                    getattr(item, "id", "?"),
                    type(exc).__name__,
                    exc,
                    f" ({held} more failures since the last warning)" if held else "",
                )
            return 0.0, {"verifier_error": f"{type(exc).__name__}: {exc}"[:200]}
        if delimiter:
            details["has_delimiter"] = True
        return reward, details

    return verify


def normalize_result(result: Any) -> VerifyResult:
    """(float reward, details of plain scalars) from a bool, number or (reward, details)."""
    details: dict = {}
    if isinstance(result, tuple):
        if len(result) != 2 or not isinstance(result[1], dict):
            raise TypeError("verifier must return a number, a bool or (reward, details dict)")
        result, details = result
    if not isinstance(result, numbers.Real):
        raise TypeError(f"reward must be a number, got {type(result).__name__}")
    reward = float(result)
    if not math.isfinite(reward):
        raise ValueError(f"reward must be finite, got {reward}")
    return reward, {str(k): _scalar(k, v) for k, v in details.items()}


def _scalar(key: Any, value: Any) -> float | int | str | bool:
    # numpy scalars look like numbers but msgpack cannot pack them: unwrap first.
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"detail {key!r} must be a bool, int, float or str, got {type(value).__name__}")
