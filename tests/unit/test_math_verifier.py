"""The `math` verifier on real GSM8K / MATH-style answers (math-verify), and its error without the extra."""

from __future__ import annotations

import builtins
import threading

import pytest

from scalerl.shared.tasks.types import TaskError, TaskItem
from scalerl.shared.tasks.verifiers import make_verifier, resolve_verifier

pytest.importorskip("math_verify")

from scalerl.shared.tasks.math_verifier import math_match  # noqa: E402

GSM8K_GOLD = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)
MATH_GOLD = "We have $\\sin 60^\\circ = \\frac{\\sqrt{3}}{2}$, so the answer is $\\boxed{\\frac{\\sqrt{3}}{2}}$."


@pytest.mark.parametrize(
    "completion, gold, reward",
    [
        ("She sold 24 in May, so 48+24 = 72 in total.\n#### 72", GSM8K_GOLD, 1.0),  # GSM8K format both sides
        ("So the total is \\boxed{72}.", GSM8K_GOLD, 1.0),
        ("So the total is \\boxed{73}.", GSM8K_GOLD, 0.0),
        ("Altogether: 1,234 clips. \\boxed{1,234}", "1234", 1.0),
        ("\\boxed{\\frac{\\sqrt3}{2}}", MATH_GOLD, 1.0),  # MATH `solution` field as the gold
        ("\\boxed{\\frac{1}{2}}", MATH_GOLD, 0.0),
        ("The value is $\\boxed{0.5}$", "\\frac{1}{2}", 1.0),  # equal values, different spelling
        ("\\boxed{(x+1)^2}", "x^2+2x+1", 1.0),  # symbolic equivalence, not text
        ("\\boxed{(x-1)^2}", "x^2+2x+1", 0.0),
        ("\\boxed{\\frac{\\pi}{2}}", "\\pi/2", 1.0),
        ("\\boxed{(1, 2)}", "(1,2)", 1.0),  # an interval
        ("I cannot tell.", "72", 0.0),
    ],
)
def test_math_match(completion, gold, reward):
    assert math_match(completion, gold)[0] == reward


def test_details_say_what_was_read():
    reward, details = math_match("so \\boxed{72}", "72")
    assert (reward, details["correct"], details["has_answer"], details["parsed"]) == (1.0, True, True, "72")
    assert math_match("no answer here", "72")[1] == {"correct": False, "has_answer": False, "parsed": ""}


def test_task_verifier_by_name_and_off_the_main_thread():
    verify = make_verifier("math")
    item = TaskItem("q", "p", GSM8K_GOLD)
    assert verify("\\boxed{72}", item)[0] == 1.0
    got = []  # math-verify's SIGALRM timeout would raise off the main thread; the verifier must still score
    t = threading.Thread(target=lambda: got.append(verify("\\boxed{72}", item)))
    t.start()
    t.join()
    assert got[0][0] == 1.0 and "verifier_error" not in got[0][1]


def test_unreadable_gold_is_a_verifier_error_not_a_crash():
    reward, details = make_verifier("math")("\\boxed{1}", TaskItem("q", "p", "\\\\\\"))
    assert reward == 0.0 and "gold answer" in details["verifier_error"]


def test_missing_extra_is_one_line_naming_it(monkeypatch):
    real_import = builtins.__import__

    def no_math_verify(name, *args, **kwargs):
        if name == "math_verify" or name.startswith("math_verify."):
            raise ImportError("No module named 'math_verify'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_math_verify)
    with pytest.raises(TaskError) as e:
        resolve_verifier("math")
    assert "scalerl[math]" in str(e.value) and "\n" not in str(e.value)
