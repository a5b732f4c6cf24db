"""The `code` verifier: run the completion's code in the sandbox (shared/tasks/sandbox.py) and check its values here.

The item's answer is test code: top-level `assert EXPR == VALUE` lines (any comparison, `assert EXPR`, `assert not
EXPR`), setup statements between them, or HumanEval's `def check(candidate): assert ...` followed by `check(f)`. The
program is the completion's last fenced code block (```python ... ```), or the whole completion when it has none.

Expected values never enter the sandbox. Each assert is split into its operands, and each operand into the parts
that need the program (a call of `f`, a name the test set from the program's values), which the sandbox's harness
evaluates after the program in its namespace, and everything else (literals, `set((4, 5))`, `round(...)`, `abs(... -
1.5)`, `math.isclose(...)`, comprehensions), which this process evaluates on the values that come back
(test_operands.py): values of exact builtin types, written as tagged JSON and read back with json.loads. A test part
that needs neither (a helper the test defines, a module other than `math`) is refused, never sent in. The comparison
then runs here, type-strict (True is not 1, a tuple is not a list, but an int and a float by value; an int subclass
or an object with its own __eq__ never comes back at all). Reward 1 only when the harness echoed this run's nonce
(it reads it after the last expression, so os._exit(0), SystemExit or an atexit hook never have it) and every
comparison holds. Exit code 0 alone is never a pass. The nonce is no secret from the program (its pipe is one of the
program's fds): a result forged with it still needs the expected values, which never entered the sandbox.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from typing import Any, Callable

from scalerl.shared.tasks.sandbox import SandboxLimits, SandboxUnavailable, require_sandbox, run_python
from scalerl.shared.tasks.test_operands import Scope, evaluate, new_budget, split
from scalerl.shared.tasks.types import TaskError, VerifyResult

# One whitespace run between the fence and the newline: two adjacent `[ \t]*` backtracked quadratically on a
# completion cut off inside a long run of spaces after its fence (30 s in the parent for 120k spaces).
_FENCE_OPEN = re.compile(r"```[ \t]*(?:(?:python3|python|py)[ \t]*)?\n")
LIMITS = SandboxLimits()
UNTAG_DEPTH = 60

_OPS: dict[type, Callable[[Any, Any], bool]] = {
    ast.NotEq: lambda a, b: not strict_equal(a, b) and a != b,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: any(strict_equal(a, x) for x in b) if isinstance(b, (list, tuple, set, frozenset)) else a in b,
    ast.NotIn: lambda a, b: not _OPS[ast.In](a, b) and a not in b,
    ast.Is: lambda a, b: strict_equal(a, b) if b is None or isinstance(b, bool) else a is b,
    ast.IsNot: lambda a, b: not _OPS[ast.Is](a, b),
}


Check = tuple[str, list[ast.expr], list[type], dict[str, Any]]  # (source text, operands, ops, the setup's names)


def extract_code(completion: str) -> str:
    """The last fenced code block of `completion`, else all of it. Linear in its length: each fence is found once."""
    last, pos = None, 0
    while (m := _FENCE_OPEN.search(completion, pos)) is not None:
        end = completion.find("```", m.end())
        if end < 0:
            break
        last, pos = completion[m.end() : end], end + 3
    return completion if last is None else last


def program_names(code: str) -> frozenset[str] | None:
    """The names the program binds. A test's name that neither it nor the test binds is not the program's to
    evaluate: in the sandbox it would be whatever the program makes it. None where the program does not parse here
    (it fails in the sandbox as well, and says why there)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    names: set[str] = set()
    for stmt in tree.body:
        for node in ast.walk(stmt):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.alias):
                names.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Global):
                names.update(node.names)
    return frozenset(names)


def compile_tests(tests: str, program: frozenset[str] | None = None) -> tuple[list[tuple[str, str]], list[Check]]:
    """(steps for the sandbox, checks for the parent). `program`: program_names of the code under test (None: not
    known yet, as when a task's answers are checked at load). Raises TaskError for test code it cannot split."""
    try:
        tree = ast.parse(tests)
    except SyntaxError as e:
        raise TaskError(f"code tests do not parse: {e.msg} (line {e.lineno})") from None
    body = _inline_check(tree.body)
    steps: list[tuple[str, str]] = []
    checks: list[Check] = []
    scope = Scope(program)
    n_eval = 0
    seen: dict[str, int] = {}  # a program name's part since the last step that may have changed it

    def send(src: str) -> None:
        steps.append(("exec", src))
        seen.clear()

    def remote(node: ast.expr) -> int:
        nonlocal n_eval
        src = ast.unparse(node)
        if isinstance(node, ast.Name) and src in seen:
            return seen[src]  # one copy of `res` for every assert that reads it (each copy counts towards 1 MiB)
        steps.append(("eval", ast.unparse(scope.inline(node, send))))
        n_eval += 1
        if any(isinstance(n, ast.Call) for n in ast.walk(node)):
            seen.clear()  # a call may change what was read before (`total(res)` popping res)
        elif isinstance(node, ast.Name):
            seen[src] = n_eval - 1
        return n_eval - 1

    for stmt in body:
        if not isinstance(stmt, ast.Assert):
            for node in ast.walk(stmt):
                if isinstance(node, ast.Assert):
                    raise TaskError(
                        f"code tests: an assert inside a {type(stmt).__name__.lower()} (line {node.lineno}) cannot be"
                        " checked outside the sandbox; write top-level `assert EXPR == VALUE` lines"
                    )
            scope.learn(stmt, remote, send)
            continue
        test = stmt.test
        if isinstance(test, ast.Compare):
            nodes, ops = [test.left, *test.comparators], [type(op) for op in test.ops]
        elif isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            nodes, ops = [test.operand, ast.Constant(False)], [ast.Is]
        else:
            nodes, ops = [test, ast.Constant(True)], [ast.Is]
        env = scope.snapshot()  # before the split: a list it hands the program (`f(xs)`) is the program's after it
        operands = [split(node, scope, remote) for node in nodes]
        checks.append((ast.unparse(test)[:80], operands, ops, env))
    if not checks:
        raise TaskError("code tests hold no assert: nothing to check a program against")
    return steps, checks


def _inline_check(body: list[ast.stmt]) -> list[ast.stmt]:
    """HumanEval's `def check(candidate): assert candidate(...) == ...` + `check(f)`: the asserts, with `f` for
    `candidate`, at the top level where their values can be split out."""
    defs = {
        s.name: s
        for s in body
        if isinstance(s, ast.FunctionDef) and len(s.args.args) == 1 and any(isinstance(x, ast.Assert) for x in s.body)
    }
    if not defs:
        return body
    out: list[ast.stmt] = []
    for s in body:
        if isinstance(s, ast.FunctionDef) and s.name in defs:
            continue
        call = s.value if isinstance(s, ast.Expr) else None
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id in defs
            and len(call.args) == 1
            and not call.keywords
        ):
            fn = defs[call.func.id]
            param, arg = fn.args.args[0].arg, call.args[0]

            for inner in fn.body:
                if isinstance(inner, ast.Expr) and isinstance(inner.value, ast.Constant):
                    continue  # the docstring
                out.append(ast.fix_missing_locations(_Sub(param, arg).visit(ast.parse(ast.unparse(inner)).body[0])))
            continue
        out.append(s)
    return out


class _Sub(ast.NodeTransformer):
    def __init__(self, name: str, value: ast.expr) -> None:
        self.name, self.value = name, value

    def visit_Name(self, node: ast.Name) -> ast.AST:
        return ast.copy_location(self.value, node) if node.id == self.name else node


def untag(tagged: Any, depth: int = 0) -> Any:
    """The value the harness tagged (sandbox._tag): exact builtin types; ValueError on anything else."""
    if depth > UNTAG_DEPTH:  # the harness tags 50 levels; a forged result deeper would overflow strict_equal's stack
        raise ValueError("value nested too deep")
    if not isinstance(tagged, list) or len(tagged) != 2 or not isinstance(tagged[0], str):
        raise ValueError("malformed value")
    tag, v = tagged
    if tag == "v":
        if v is None or type(v) in (bool, int, float, str):
            return v
    elif tag == "f" and v in ("nan", "inf", "-inf"):
        return float(v)
    elif tag == "b" and isinstance(v, str):
        return bytes.fromhex(v)
    elif tag in ("l", "t", "s", "S") and isinstance(v, list):
        items = [untag(x, depth + 1) for x in v]
        return {"l": list, "t": tuple, "s": set, "S": frozenset}[tag](items)
    elif tag == "d" and isinstance(v, list):
        return {untag(k, depth + 1): untag(x, depth + 1) for k, x in (_pair(p) for p in v)}
    raise ValueError(f"malformed value tag {tag!r}")


def _pair(p: Any) -> tuple[Any, Any]:
    if not isinstance(p, list) or len(p) != 2:
        raise ValueError("malformed dict item")
    return p[0], p[1]


def strict_equal(a: Any, b: Any) -> bool:
    """==, but True != 1 and a list != a tuple, all the way down. An int and a float compare by value, as Python's ==
    does: MBPP's own reference solutions return 20.0 where the test says 20."""
    if type(a) in (int, float) and type(b) in (int, float):
        return bool(a == b) or (type(a) is float and type(b) is float and math.isnan(a) and math.isnan(b))
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(
            strict_equal(k1, k2) and strict_equal(a[k1], b[k2]) for k1, k2 in zip(sorted_keys(a), sorted_keys(b))
        )
    if isinstance(a, (set, frozenset)):
        return {_key(x) for x in a} == {_key(y) for y in b}
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def sorted_keys(d: dict) -> list[Any]:
    return sorted(d, key=_key)


def _key(x: Any) -> str:
    """A canonical text for a value: sets' elements sorted, so {frozenset({8, 16})} matches however it was built; an
    int and a float of the same value share one (as strict_equal has them equal)."""
    t = type(x)
    if t in (set, frozenset):
        return f"{t.__name__}:{{{','.join(sorted(_key(v) for v in x))}}}"
    if t in (list, tuple):
        return f"{t.__name__}:[{','.join(_key(v) for v in x)}]"
    if t is dict:
        return f"dict:{{{','.join(sorted(_key(k) + '=' + _key(v) for k, v in x.items()))}}}"
    if t is float and x.is_integer():
        return f"num:{int(x)!r}"
    if t in (int, float):
        return f"num:{x!r}"
    return f"{t.__name__}:{x!r}"


def _holds(operands: list[ast.expr], ops: list[type], env: dict[str, Any], values: list[Any]) -> bool:
    try:
        budget = new_budget()  # shared by the check's operands
        resolved = [evaluate(o, env, values, budget) for o in operands]
    # The program's values can make an operation here fail (`abs("x")`, a huge `[0] * n`): its answer is wrong.
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError, RecursionError, MemoryError):
        return False
    for left, op, right in zip(resolved, ops, resolved[1:]):
        try:
            if not (strict_equal(left, right) if op is ast.Eq else _OPS[op](left, right)):
                return False
        # "<" between a str and an int, -1 in b"abc": the program's value is wrong. Nothing the program returns may
        # escape as an exception (a RecursionError from a deep forged value included).
        except Exception:  # noqa: BLE001
            return False
    return True


def code_match(completion: str, answer: str, limits: SandboxLimits = LIMITS) -> VerifyResult:
    code = extract_code(completion)
    if not code.strip():
        return 0.0, {"correct": False, "has_answer": False, "parsed": ""}
    try:
        steps, checks = compile_tests(answer, program_names(code))
    except TaskError as e:  # a name neither the test nor the program binds, at this program: it cannot pass
        return 0.0, {"correct": False, "has_answer": True, "parsed": code.strip()[:64], "error": str(e)[:160]}
    result = run_python(code, limits, steps=steps)
    error = ""
    correct = False
    if result.ok and result.values is not None and len(result.values) == sum(s[0] == "eval" for s in steps):
        try:
            values = [untag(v) for v in result.values]
        except (ValueError, TypeError, RecursionError):
            values, error = None, "malformed values from the sandbox"
        if values is not None:
            failed = [text for text, operands, ops, env in checks if not _holds(operands, ops, env, values)]
            correct = not failed
            error = f"failed: {failed[0]}" if failed else ""
    else:
        lines = result.stderr.strip().splitlines()
        error = lines[-1] if lines else ("timed out" if result.timed_out else "did not finish")
    return float(correct), {
        "correct": correct,
        "has_answer": True,
        "parsed": code.strip()[:64],
        "exit_code": -1 if result.returncode is None else result.returncode,
        "timed_out": result.timed_out,
        "error": error[:160],
        "sandbox_s": round(result.seconds, 4),
    }


def require_code_sandbox() -> None:
    """At task load: a machine where model code would run without bubblewrap (as root, or as the caller with the
    caller's files in view) or without seccomp refuses (TaskError, exit 2)."""
    try:
        require_sandbox(LIMITS)
    except SandboxUnavailable as e:
        raise TaskError(f"verifier 'code': {e}") from None
