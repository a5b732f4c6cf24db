"""Reward hacks on the parts of a test around the program's value, through the real sandbox. Each program is wrong
and used to score 1: the test's `round`, `abs`, `set`, `sorted`, `math.isclose` or expected side ran after it, in
its namespace, where it had rebound them. Each honest program beside it still scores 1."""

from __future__ import annotations

import pytest

from scalerl.shared.tasks.code_verifier import code_match
from scalerl.shared.tasks.sandbox import SandboxLimits, backend

FAST = SandboxLimits(timeout_s=3.0, cpu_s=3)

pytestmark = [
    pytest.mark.skipif(backend() != "bwrap", reason="without bwrap the code verifier refuses to run"),
    pytest.mark.usefixtures("sandbox_alone"),
]

ROUND = "assert round(f(2), 6) == 1.5"
ABS = "assert abs(f(2) - 1.5) < 1e-6"
SET = "assert set(similar((3, 4, 5, 6), (5, 7, 4, 10))) == set((4, 5))"
ISCLOSE = "import math\nassert math.isclose(area(2), 12.566, rel_tol=0.001)"
SORTED = "assert f([3, 1, 2]) == sorted([3, 1, 2])"
EXPECTED = "assert reverse('abc') == 'abc'[::-1]\nassert power(10, 6) == 10**6"

HACKS = {
    "__round__": (
        "class Fake:\n    def __round__(self, n=None):\n        return 1.5\ndef f(x):\n    return Fake()",
        ROUND,
    ),
    "own __builtins__": (
        "import builtins\n__builtins__ = dict(vars(builtins))\n__builtins__['abs'] = lambda x: 0.0\n"
        "def f(x):\n    return 12345.0",
        ABS,
    ),
    "globals' set": (
        "import builtins\n__builtins__ = dict(vars(builtins))\n__builtins__['set'] = lambda *a: builtins.set()\n"
        "def similar(a, b):\n    return ()",
        SET,
    ),
    "math.isclose": ("import math\nmath.isclose = lambda *a, **k: True\ndef area(r):\n    return -1", ISCLOSE),
    "builtins.sorted": ("import builtins\nbuiltins.sorted = lambda *a, **k: [7]\ndef f(x):\n    return [7]", SORTED),
    "builtins.compile": (
        "import builtins\n_c = builtins.compile\n"
        "def compile(src, name, mode, *a, **k):\n    return _c('0' if name == '<test>' else src, name, mode, *a, **k)\n"
        "builtins.compile = compile\ndef reverse(s):\n    return 0\ndef power(a, b):\n    return 0",
        EXPECTED,
    ),
}
HACKS["own round"] = ("def round(*a, **k):\n    return 1.5\ndef f(x):\n    return 0.0", ROUND)
# The second review's: a name the test never binds (MBPP's tests use math the solution imported), expected values in
# the test's globals, and a comparison made in a setup line.
ISCLOSE_UNIMPORTED = "assert math.isclose(volume(10), 4188.790204786391, rel_tol=0.001)"
KEPT = "inp = [3, 1, 2]\nexpected = [1, 2, 3]\nassert sort_list(inp) == expected"
SETUP_EQ = "ok = f(2) == 4\nassert ok"
HACKS["a math of its own"] = (
    "class _M:\n    def isclose(self, *a, **k):\n        return True\nmath = _M()\ndef volume(r):\n    return 0.0",
    ISCLOSE_UNIMPORTED,
)
HACKS["the test's globals"] = ("def sort_list(xs):\n    return globals()['expected']", KEPT)
HACKS["a comparison in setup"] = (
    "class Y:\n    def __eq__(self, o):\n        return True\n    __hash__ = None\ndef f(x):\n    return Y()",
    SETUP_EQ,
)
# The third review's: math handed to the program, an expected value on the input's line, a changed input.
HANDED_MATH = "import math\ns = Shape()\ns.rotate(math.pi / 2)\nassert math.isclose(s.area(), 12.566370614359172)"
SAME_LINE = "xs, expected = [3, 1, 2], [1, 2, 3]\nassert f(xs) == expected"
UNCHANGED = "xs = [3, 1, 2]\nassert f(xs) == [1, 2, 3]\nassert xs == [3, 1, 2]"
SHAPE = "class Shape:\n    def rotate(self, a):\n        pass\n    def area(self):\n        return {}"
HACKS["math handed over"] = (
    "import math\nmath.isclose = lambda *a, **k: True\n" + SHAPE.format("-1.0"),
    HANDED_MATH,
)
HACKS["beside the input"] = ("def f(x):\n    return globals().get('expected')", SAME_LINE)
HACKS["changes its input"] = ("def f(xs):\n    xs.sort()\n    return xs", UNCHANGED)
HONEST = {
    "math handed over": ("import math\n" + SHAPE.format("math.pi * 4"), HANDED_MATH),
    "beside the input": ("def f(x):\n    return sorted(x)", SAME_LINE),
    "changes its input": ("def f(xs):\n    return sorted(xs)", UNCHANGED),
    "a math of its own": ("import math\ndef volume(r):\n    return 4 / 3 * math.pi * r**3", ISCLOSE_UNIMPORTED),
    "the test's globals": ("def sort_list(xs):\n    return sorted(xs)", KEPT),
    "a comparison in setup": ("def f(x):\n    return 2 * x", SETUP_EQ),
    "own round": ("def f(x):\n    return 1.5", ROUND),
    "__round__": ("def f(x):\n    return 1.5000001", ROUND),
    "own __builtins__": ("def f(x):\n    return 1.5", ABS),
    "globals' set": ("def similar(a, b):\n    return tuple(set(a) & set(b))", SET),
    "math.isclose": ("import math\ndef area(r):\n    return math.pi * r * r", ISCLOSE),
    "builtins.sorted": ("def f(x):\n    return sorted(x)", SORTED),
    "builtins.compile": ("def reverse(s):\n    return s[::-1]\ndef power(a, b):\n    return a**b", EXPECTED),
}


@pytest.mark.parametrize("name", list(HACKS))
def test_a_hack_on_the_tests_wrappers_scores_zero_and_the_honest_program_one(name: str):
    program, tests = HACKS[name]
    reward, details = code_match(program, tests, FAST)
    assert reward == 0.0, (name, details)
    program, tests = HONEST[name]
    reward, details = code_match(program, tests, FAST)
    assert reward == 1.0, (name, details)


@pytest.mark.parametrize(
    "program, tests",
    [
        ("from collections import Counter\ndef f(s):\n    return Counter(s)", "assert f('aab') == {'a': 2, 'b': 1}"),
        ("import numpy as np\ndef f(xs):\n    return np.sum(xs)", "assert f([1, 2, 3]) == 6"),
        ("def median(a, b, c):\n    return 0.5 * (a + b)", "assert median(15, 25, 35) == 20"),  # MBPP 432's own
        ("def f():\n    return {frozenset([16, 8])}", "assert f() == {frozenset({8, 16})}"),
        ("def sort_in_place(xs):\n    xs.sort()", "xs = [3, 1, 2]\nsort_in_place(xs)\nassert xs == [1, 2, 3]"),
    ],
)
def test_correct_programs_that_scored_zero_now_score_one(program: str, tests: str):
    reward, details = code_match(program, tests, FAST)
    assert reward == 1.0, details
