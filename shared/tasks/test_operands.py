"""A test's operands, split between the sandbox and this process.

An assert's expected side (`set((4, 5))`, `10**6`, `'abc'[::-1]`) and the code wrapped round the program's value
(`round(f(x), 6)`, `abs(f(x) - 1.5) < 1e-6`, `math.isclose(area(2), 12.566)`) must not be evaluated where the program
ran: there the program decides what `set`, `abs` or `math.isclose` do (it can rebind a builtin, patch a module, hook
`compile`), and passes without knowing the answer. So each operand is split. Its largest parts that need the
program (a call of `f`, a name the test bound to the program's values) are evaluated in the sandbox and come back as
values of exact builtin types; everything around them is evaluated here, by a small interpreter of pure operations
on builtin values, on a fixed list of builtins, `math` functions and methods. A part that needs neither the program
nor only what this interpreter knows (a helper the test defines, a module other than `math`) is refused with a
TaskError: sent into the sandbox it would be the program's to answer. The item then scores 0, naming why.

The interpreter bounds what one operation may build (sequences of MAX_ITEMS, integers of MAX_INT_BITS), because the
values it combines are the program's.
"""

from __future__ import annotations

import ast
import builtins
import copy
import math
import operator
from collections.abc import Callable
from typing import Any

from scalerl.shared.tasks.types import TaskError

MAX_ITEMS = 1_000_000  # the longest sequence one operation here may build
MAX_INT_BITS = 100_000  # the largest integer `**`, `<<` or math.prod may build
MAX_OPS = 2_000_000  # the most nodes one check may evaluate (comprehensions and key functions count each item)
MAX_BUILT = 10_000_000  # the most items and characters the binary operators of one check may build, together
MAX_FACTORIAL = 10_000  # factorial, comb and perm arguments

_BUILTIN_NAMES = (
    "abs all any ascii bin bool bytes chr dict divmod enumerate filter float frozenset hex int isinstance len list map "
    "max min oct ord pow range repr reversed round set sorted str sum tuple type zip"
).split()
SAFE_BUILTINS: dict[str, Any] = {name: getattr(builtins, name) for name in _BUILTIN_NAMES}
# A test's builtin name is the builtin, whatever the program defines: with a program's `round` in charge of the
# test's `round(f(x), 6)`, defining `round` would pass. Builtins off the list above (`print`, `pow`'s kin, `open`)
# are neither the program's nor evaluated here.
OTHER_BUILTINS = frozenset(dir(builtins)) - set(SAFE_BUILTINS)
SAFE_MATH = frozenset(
    "acos asin atan atan2 ceil comb copysign cos degrees dist e exp fabs factorial floor fmod fsum gcd hypot inf "
    "isclose isfinite isinf isnan isqrt lcm log log10 log2 nan perm pi pow prod radians sin sqrt tan tau trunc".split()
)
# Methods of the exact builtin types that neither mutate their receiver nor build more than their inputs.
SAFE_METHODS = frozenset(
    "capitalize casefold copy count endswith find get index isalnum isalpha isdecimal isdigit islower isnumeric "
    "isspace istitle isupper items join keys lower lstrip rstrip split startswith strip swapcase title upper values "
    "real imag is_integer bit_length".split()
)
_RECEIVERS = (str, bytes, list, tuple, dict, set, frozenset, int, float, bool, complex)

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
}
_UNARY: dict[type, Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
    ast.Not: operator.not_,
    ast.Invert: operator.invert,
}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}
_COMPS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)


class Remote(ast.expr):
    """A part of an operand evaluated in the sandbox: the index of its value among the harness's values."""

    _fields = ("index",)

    def __init__(self, index: int, text: str) -> None:
        super().__init__()
        self.index, self.text = index, text


class Deferred:
    """A setup name whose value mixes the program's values with the test's (`ok = f(2) == 4`): its expression, split
    like an assert's operand, evaluated here when an assert reads it. Run in the sandbox, the comparison in it would
    be the program's (an object whose __eq__ says yes)."""

    def __init__(self, expr: ast.expr, env: dict[str, Any]) -> None:
        self.expr, self.env = expr, env


class Scope:
    """What the test's setup bound, as this process knows it.

    known: names set to values evaluated here (`xs = [3, 1, 2]`, `import math`), or Deferred;
    program: names set from the program's values (`res = f(3)`, an `xs` a program call may have changed): the
      sandbox evaluates them;
    foreign: names bound some other way (a helper `def`, a loop, `import numpy`): neither place may evaluate them.
    defined: the names the program binds at its top level (program_names), None where no program is known yet (a
      task's answers checked at load): a name that neither the test nor the program binds is then foreign, not the
      program's, since evaluated in the sandbox it would be whatever the program makes it (a `math` of its own).
    """

    def __init__(self, defined: frozenset[str] | None = None) -> None:
        self.known: dict[str, Any] = {"math": math}  # a test may use math that only the program imported
        self.program: set[str] = set()
        self.foreign: set[str] = set()
        self.defined = defined

    def snapshot(self) -> dict[str, Any]:
        return dict(self.known)

    def bind(self, name: str, kind: str, value: Any = None) -> None:
        self.known.pop(name, None)
        self.program.discard(name)
        self.foreign.discard(name)
        if kind == "known":
            self.known[name] = value
        else:
            getattr(self, kind).add(name)

    def _programs(self, name: str) -> bool:
        if name in self.program:
            return True
        if name in self.known or name in self.foreign or name in SAFE_BUILTINS or name in OTHER_BUILTINS:
            return False
        return self.defined is None or name in self.defined

    def needs_program(self, node: ast.AST, bound: frozenset[str] = frozenset()) -> bool:
        """Does `node` name anything only the program defines (a name no test line bound and no builtin)?"""
        return any(isinstance(n, ast.Name) and n.id not in bound and self._programs(n.id) for n in ast.walk(node))

    def foreign_names(self, node: ast.AST, bound: frozenset[str] = frozenset()) -> list[str]:
        """Names in `node` that neither place may evaluate: helpers, other modules, builtins off the list, and names
        nobody defines."""
        out = set()
        for n in ast.walk(node):
            if not isinstance(n, ast.Name) or n.id in bound or n.id in self.known or n.id in SAFE_BUILTINS:
                continue
            if n.id in self.foreign or (
                n.id not in self.program and (n.id in OTHER_BUILTINS or not self._programs(n.id))
            ):
                out.add(n.id)
        return sorted(out)

    def whole_remote(self, node: ast.expr) -> bool:
        """Would split() send all of `node` into the sandbox as one part?"""
        return not _parentable(node, self, frozenset()) and self.needs_program(node) and not self.foreign_names(node)

    def learn(self, stmt: ast.stmt, remote: Callable[[ast.expr], int], send: Callable[[str], None]) -> None:
        """Track what a setup statement binds, and `send` the sandbox what it must run of it. Only what needs the
        program runs there (`res = f(3)`, `s = Solution()`, `sort_in_place(xs)`), with every value the parent knows
        written in as a literal (`inline`): the test's own lines never run there, since expected values left in the
        sandbox's globals (`expected = [1, 2, 3]`, or sharing a line or a list with an input) are the program's to
        read."""
        if isinstance(stmt, ast.AnnAssign) and stmt.value is not None and isinstance(stmt.target, ast.Name):
            stmt = ast.Assign(targets=[stmt.target], value=stmt.value, lineno=stmt.lineno)
        if isinstance(stmt, ast.Import):
            for a in stmt.names:
                name = a.asname or a.name.split(".")[0]
                self.bind(name, "known", math) if a.name == "math" else self.bind(name, "foreign")
            return
        if isinstance(stmt, ast.ImportFrom):
            for a in stmt.names:
                if stmt.module == "math" and not stmt.level and a.name == "*":
                    for name in SAFE_MATH:
                        self.bind(name, "known", getattr(math, name))
                elif stmt.module == "math" and not stmt.level and a.name in SAFE_MATH:
                    self.bind(a.asname or a.name, "known", getattr(math, a.name))
                elif a.name != "*":
                    self.bind(a.asname or a.name, "foreign")
            return
        if isinstance(stmt, ast.Assign) and all(_plain_target(t) for t in stmt.targets):
            self._assign(stmt, remote, send)
            return
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and self._program_call(stmt.value):
            send(ast.unparse(self.inline(stmt.value, send)))  # `f(xs)` for its effect: xs is the program's now
            return
        # Anything else (a def, a loop, `x += 1`, `s.items.append(3)`): it does not run, and what it binds or touches,
        # the program's objects included, cannot be used (a loop pushing into the program's stack would be missing).
        for n in ast.walk(stmt):
            if isinstance(n, ast.Name) and (n.id in self.known or n.id in self.program or isinstance(n.ctx, ast.Store)):
                self.bind(n.id, "foreign")
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.bind(n.name, "foreign")

    def _program_call(self, call: ast.Call) -> bool:
        """A call of the program's function or method whose arguments are inputs: values the parent knows, or the
        program's own (`s.push(Node(1))`)."""
        f = call.func
        root = f.value if isinstance(f, ast.Attribute) else f
        if not (isinstance(root, ast.Name) and self._programs(root.id)):
            return False
        return not self.foreign_names(call)

    def inline(self, node: ast.expr, send: Callable[[str], None]) -> ast.expr:
        """A program part as the sandbox evaluates it: every part the parent knows written in as a literal, so that
        no line of the test need run there. A list, dict or set the test holds and hands the program (`f(xs)`) is
        the one exception: the program may change it in place, and later reads must see that, so `xs = [...]` is
        sent first and xs is the program's from then on."""
        return self._inline(node, send)

    def _inline(self, node: ast.expr, send: Callable[[str], None]) -> ast.expr:
        if isinstance(node, ast.Name) and type(self.known.get(node.id)) in (list, dict, set):
            # Handed over whole (`f(xs)`, not `f(xs[0])`, whose part is a literal): sent as itself, the test's
            # other values left out.
            send(f"{node.id} = {ast.unparse(_literal(self.known[node.id]))}")
            self.bind(node.id, "program")
            return node
        if not self.needs_program(node):
            if isinstance(node, ast.Name) and isinstance(self.known.get(node.id), Deferred):
                raise TaskError(
                    f"code tests: the program is handed {node.id}, which mixes the program's values with the test's "
                    "and is evaluated outside the sandbox"
                )
            try:
                value = evaluate(split(node, self, _no_remote), self.snapshot(), [])
            except TaskError:
                raise
            except Exception as e:  # noqa: BLE001 - the test's own input fails: nothing can pass it
                raise TaskError(f"code tests: `{ast.unparse(node)[:60]}` fails: {type(e).__name__}: {e}") from None
            return _literal(value)
        out = copy.copy(node)
        for field, old in ast.iter_fields(node):
            if isinstance(old, ast.expr):
                setattr(out, field, self._inline(old, send))
            elif isinstance(old, list):
                setattr(out, field, [self._inline_item(x, send) for x in old])
        return out

    def _inline_item(self, x: Any, send: Callable[[str], None]) -> Any:
        if isinstance(x, ast.expr):
            return self._inline(x, send)
        if isinstance(x, ast.keyword):
            return ast.keyword(arg=x.arg, value=self._inline(x.value, send))
        return x

    def _assign(self, stmt: ast.Assign, remote: Callable[[ast.expr], int], send: Callable[[str], None]) -> None:
        value = stmt.value
        names = [n.id for t in stmt.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
        if not self.needs_program(value):
            if self.foreign_names(value):
                for name in names:
                    self.bind(name, "foreign")
                return
            try:
                got = evaluate(split(value, self, _no_remote), self.snapshot(), [])
            except TaskError:  # not something this process evaluates
                for name in names:
                    self.bind(name, "foreign")
                return
            except Exception as e:  # noqa: BLE001 - the test's own setup fails: nothing can pass it
                raise TaskError(f"code tests: setup line {stmt.lineno} fails: {type(e).__name__}: {e}") from None
            for t in stmt.targets:
                _unpack(t, got, self)
            return
        if self.whole_remote(value):  # `res = f(3)`: the program's value, nothing of the test's in it
            rhs = self.inline(value, send)
            send(ast.unparse(ast.Assign(targets=stmt.targets, value=rhs, lineno=stmt.lineno)))
            for name in names:
                self.bind(name, "program")
            return
        if len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            env = self.snapshot()  # before the split, which may hand the program a list (inline)
            self.bind(stmt.targets[0].id, "known", Deferred(split(value, self, remote), env))
            return
        for name in names:
            self.bind(name, "foreign")


def _literal(value: Any) -> ast.expr:
    """Python source for a value the parent knows, to write into what the sandbox runs. Non-finite floats are
    `float('nan')`: evaluated there, the program could make them anything, but they are its input, not an answer."""
    t = type(value)
    if value is None or t in (bool, int, str, bytes) or (t is float and math.isfinite(value)):
        if t is int and value.bit_length() > 13_000:  # repr's 4,300-digit limit
            raise TaskError("code tests: an input integer of over 4,300 digits")
        return ast.Constant(value)
    if t is float:
        return ast.Call(func=ast.Name("float", ast.Load()), args=[ast.Constant(repr(value))], keywords=[])
    if t in (list, tuple):
        return (ast.List if t is list else ast.Tuple)(elts=[_literal(v) for v in value], ctx=ast.Load())
    if t in (set, frozenset):
        items = [_literal(v) for v in value]
        inner: ast.expr = ast.Set(elts=items) if items else ast.Call(ast.Name("set", ast.Load()), [], [])
        return inner if t is set else ast.Call(ast.Name("frozenset", ast.Load()), [inner], [])
    if t is dict:
        return ast.Dict(keys=[_literal(k) for k in value], values=[_literal(v) for v in value.values()])
    raise TaskError(f"code tests: a {t.__name__} the test computes cannot be handed to the program")


def _no_remote(node: ast.expr) -> int:
    raise AssertionError(ast.unparse(node))  # a value that needs no program has no part for the sandbox


def _plain_target(t: ast.expr) -> bool:
    return isinstance(t, ast.Name) or (isinstance(t, (ast.Tuple, ast.List)) and all(_plain_target(e) for e in t.elts))


def _unpack(target: ast.expr, value: Any, scope: Scope) -> None:
    if isinstance(target, ast.Name):
        scope.bind(target.id, "known", value)
        return
    assert isinstance(target, (ast.Tuple, ast.List))
    try:
        values = list(value)
    except TypeError as e:
        raise TaskError(f"code tests: setup line {target.lineno} fails: TypeError: {e}") from None
    if len(values) != len(target.elts):
        raise TaskError(f"code tests: setup line {target.lineno} unpacks {len(values)} values")
    for t, v in zip(target.elts, values):
        _unpack(t, v, scope)


# ---- splitting ------------------------------------------------------------------------------------------------


def split(node: ast.expr, scope: Scope, remote: Callable[[ast.expr], int], bound: frozenset[str] = frozenset()):
    """`node` with each largest part that needs the program replaced by a Remote (registered through `remote`, which
    returns its index). Raises TaskError for a part neither place can evaluate honestly."""
    if _parentable(node, scope, bound):
        return _rebuild(node, scope, remote, bound)
    if scope.needs_program(node, bound):
        foreign = scope.foreign_names(node)
        inner = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} & bound
        if foreign or inner:
            what = f"names {', '.join(foreign or sorted(inner))}"
            raise TaskError(
                f"code tests: `{ast.unparse(node)[:60]}` mixes the program's values with {what}, which only the "
                "sandbox could evaluate and the program would then decide; compare the program's values with "
                "literals or builtins"
            )
        return Remote(remote(node), ast.unparse(node))
    foreign = scope.foreign_names(node, bound)
    if foreign:
        raise TaskError(
            f"code tests: `{ast.unparse(node)[:60]}` uses {', '.join(foreign)}, which a test line bound or changed in a"
            " way the verifier does not split (a def, a loop, an import other than math, `d[k] = v`), or which"
            " nobody defines; write the asserts on the program's calls with literal or builtin expected values"
        )
    raise TaskError(
        f"code tests: `{ast.unparse(node)[:60]}` cannot be evaluated outside the sandbox, and inside it the program "
        "would decide it; use literals, builtins and math"
    )


def _parentable(node: ast.expr, scope: Scope, bound: frozenset[str]) -> bool:
    """Is `node` itself an operation this process evaluates (its parts are split in turn)?"""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return (
            node.id in bound
            or node.id in scope.known
            or (node.id in SAFE_BUILTINS and node.id not in scope.program and node.id not in scope.foreign)
        )
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return not any(isinstance(e, ast.Starred) for e in node.elts)
    if isinstance(node, ast.Dict):
        return None not in node.keys
    if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Subscript, ast.Slice)):
        return True
    if isinstance(node, _COMPS):
        return all(_simple_target(g.target) and not g.is_async for g in node.generators)
    if isinstance(node, ast.Lambda):
        a = node.args
        return not (a.vararg or a.kwarg or a.kwonlyargs or a.posonlyargs or a.defaults)
    if isinstance(node, ast.Attribute):
        return _math_attr(node, scope) is not None
    if isinstance(node, ast.Call):
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            return False
        f = node.func
        if isinstance(f, ast.Name):
            return _parentable(f, scope, bound) and f.id not in bound
        if isinstance(f, ast.Attribute):
            return _math_attr(f, scope) is not None or f.attr in SAFE_METHODS
    return False


def _math_attr(node: ast.Attribute, scope: Scope) -> str | None:
    v = node.value
    if isinstance(v, ast.Name) and scope.known.get(v.id) is math and node.attr in SAFE_MATH:
        return node.attr
    return None


def _simple_target(t: ast.expr) -> bool:
    return isinstance(t, ast.Name) or (isinstance(t, ast.Tuple) and all(isinstance(e, ast.Name) for e in t.elts))


def _targets(t: ast.expr) -> set[str]:
    return {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}


def _rebuild(node: ast.expr, scope: Scope, remote: Callable[[ast.expr], int], bound: frozenset[str]) -> ast.expr:
    def sub(child: ast.expr, inner: frozenset[str] = bound) -> ast.expr:
        return split(child, scope, remote, inner)

    if isinstance(node, (ast.Constant, ast.Name)):
        return node
    if isinstance(node, ast.Attribute):  # math.pi
        return node
    if isinstance(node, ast.Set):
        return ast.Set(elts=[sub(e) for e in node.elts])
    if isinstance(node, (ast.Tuple, ast.List)):
        return type(node)(elts=[sub(e) for e in node.elts], ctx=ast.Load())
    if isinstance(node, ast.Dict):
        return ast.Dict(keys=[sub(k) for k in node.keys if k is not None], values=[sub(v) for v in node.values])
    if isinstance(node, ast.BinOp):
        return ast.BinOp(left=sub(node.left), op=node.op, right=sub(node.right))
    if isinstance(node, ast.UnaryOp):
        return ast.UnaryOp(op=node.op, operand=sub(node.operand))
    if isinstance(node, ast.BoolOp):
        return ast.BoolOp(op=node.op, values=[sub(v) for v in node.values])
    if isinstance(node, ast.Compare):
        return ast.Compare(left=sub(node.left), ops=node.ops, comparators=[sub(c) for c in node.comparators])
    if isinstance(node, ast.IfExp):
        return ast.IfExp(test=sub(node.test), body=sub(node.body), orelse=sub(node.orelse))
    if isinstance(node, ast.Subscript):
        return ast.Subscript(value=sub(node.value), slice=sub(node.slice), ctx=ast.Load())
    if isinstance(node, ast.Slice):
        return ast.Slice(*(None if p is None else sub(p) for p in (node.lower, node.upper, node.step)))
    if isinstance(node, _COMPS):
        inner = bound
        gens = []
        for g in node.generators:
            it = sub(g.iter, inner)
            inner = inner | _targets(g.target)
            gens.append(ast.comprehension(target=g.target, iter=it, ifs=[sub(c, inner) for c in g.ifs], is_async=0))
        if isinstance(node, ast.DictComp):
            return ast.DictComp(key=sub(node.key, inner), value=sub(node.value, inner), generators=gens)
        return type(node)(elt=sub(node.elt, inner), generators=gens)
    if isinstance(node, ast.Lambda):
        inner = bound | {a.arg for a in node.args.args}
        return ast.Lambda(args=node.args, body=sub(node.body, inner))
    if isinstance(node, ast.Call):
        f = node.func
        func = ast.Attribute(value=sub(f.value), attr=f.attr, ctx=ast.Load()) if isinstance(f, ast.Attribute) else f
        if isinstance(f, ast.Attribute) and _math_attr(f, scope) is not None:
            func = f
        return ast.Call(
            func=func,
            args=[sub(a) for a in node.args],
            keywords=[ast.keyword(arg=k.arg, value=sub(k.value)) for k in node.keywords],
        )
    raise AssertionError(type(node).__name__)  # _parentable admitted it


# ---- evaluating -------------------------------------------------------------------------------------------------


def evaluate(node: ast.expr, env: dict[str, Any], values: list[Any], budget: list[int] | None = None) -> Any:
    """The value of a split operand: `env` from the test's setup, `values` the sandbox's (untagged, exact types).
    `budget` (new_budget()): one for all the operands of a check."""
    return _Eval(env, values, budget=budget).run(node, {})


def new_budget() -> list[int]:
    """[operations, items built] left to one check (MAX_OPS, MAX_BUILT)."""
    return [MAX_OPS, MAX_BUILT]


class _Eval:
    def __init__(
        self, env: dict[str, Any], values: list[Any], parent: _Eval | None = None, budget: list[int] | None = None
    ) -> None:
        self.env, self.values = dict(env), values
        self.budget: list[int] = parent.budget if parent is not None else budget or new_budget()

    def run(self, node: ast.expr, local: dict[str, Any]) -> Any:  # noqa: C901 - one case per node type
        self.budget[0] -= 1
        if self.budget[0] < 0:  # a comprehension or key function over the program's large values
            raise ValueError(f"over {MAX_OPS} operations")
        if isinstance(node, Remote):
            return self.values[node.index]
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in local:
                return local[node.id]
            if node.id in self.env:
                value = self.env[node.id]
                if isinstance(value, Deferred):
                    value = self.env[node.id] = _Eval({**value.env}, self.values, self).run(value.expr, {})
                return value
            return SAFE_BUILTINS[node.id]
        if isinstance(node, ast.Attribute):  # math.<name> only (split admits nothing else bare)
            return getattr(math, node.attr)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = [self.run(e, local) for e in node.elts]
            return {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)](items)
        if isinstance(node, ast.Dict):
            return {self.run(k, local): self.run(v, local) for k, v in zip(node.keys, node.values)}  # type: ignore[arg-type]
        if isinstance(node, ast.BinOp):
            a, b = self.run(node.left, local), self.run(node.right, local)
            _check_size(node.op, a, b)
            out = _BINOPS[type(node.op)](a, b)
            self.budget[1] -= _size(out)
            if self.budget[1] < 0:  # `c * n` in a comprehension: each product small, their sum not
                raise ValueError(f"over {MAX_BUILT} items built")
            return out
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self.run(node.operand, local))
        if isinstance(node, ast.BoolOp):
            v: Any = None
            for part in node.values:
                v = self.run(part, local)
                if isinstance(node.op, ast.And) and not v or isinstance(node.op, ast.Or) and v:
                    return v
            return v
        if isinstance(node, ast.Compare):
            left = self.run(node.left, local)
            for op, c in zip(node.ops, node.comparators):
                right = self.run(c, local)
                if isinstance(op, (ast.In, ast.NotIn)):
                    self._charge(right)  # a scan of the program's list, once per item of a comprehension
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return self.run(node.body if self.run(node.test, local) else node.orelse, local)
        if isinstance(node, ast.Subscript):
            return self.run(node.value, local)[self.run(node.slice, local)]
        if isinstance(node, ast.Slice):
            return slice(*(None if p is None else self.run(p, local) for p in (node.lower, node.upper, node.step)))
        if isinstance(node, _COMPS):
            return self._comprehension(node, local)
        if isinstance(node, ast.Lambda):
            names = [a.arg for a in node.args.args]

            def fn(*args: Any) -> Any:
                if len(args) != len(names):
                    raise TypeError(f"lambda takes {len(names)} arguments, {len(args)} given")
                return self.run(node.body, {**local, **dict(zip(names, args))})

            return fn
        if isinstance(node, ast.Call):
            args = [self.run(a, local) for a in node.args]
            kwargs = {k.arg: self.run(k.value, local) for k in node.keywords if k.arg is not None}
            f = node.func
            if isinstance(f, ast.Attribute):
                if isinstance(f.value, ast.Name) and f.value.id not in local and self.env.get(f.value.id) is math:
                    return _call(getattr(math, f.attr), args, kwargs)
                receiver = self.run(f.value, local)
                if type(receiver) not in _RECEIVERS:  # exact builtin types only: no __getattr__ of the program's
                    raise TypeError(f"no method {f.attr!r} on {type(receiver).__name__}")
                self._charge(receiver)  # count, index, find, join: a pass over it
                return _call(getattr(receiver, f.attr), args, kwargs)
            return _call(self.run(f, local), args, kwargs)
        raise TypeError(f"cannot evaluate {type(node).__name__}")

    def _charge(self, value: Any) -> None:
        self.budget[0] -= len(value) if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)) else 0
        if self.budget[0] < 0:
            raise ValueError(f"over {MAX_OPS} operations")

    def _comprehension(self, node: ast.expr, local: dict[str, Any]) -> Any:
        out: list[Any] = []
        gens = node.generators  # type: ignore[attr-defined]

        def walk(i: int, scope: dict[str, Any]) -> None:
            if i == len(gens):
                if isinstance(node, ast.DictComp):
                    out.append((self.run(node.key, scope), self.run(node.value, scope)))
                else:
                    out.append(self.run(node.elt, scope))  # type: ignore[attr-defined]
                if len(out) > MAX_ITEMS:
                    raise ValueError(f"a comprehension of over {MAX_ITEMS} items")
                return
            g = gens[i]
            for item in self.run(g.iter, scope):
                inner = {**scope, **_assign(g.target, item)}
                if all(self.run(c, inner) for c in g.ifs):
                    walk(i + 1, inner)

        walk(0, local)
        if isinstance(node, ast.DictComp):
            return dict(out)
        return {ast.ListComp: list, ast.SetComp: set, ast.GeneratorExp: list}[type(node)](out)


def _assign(target: ast.expr, value: Any) -> dict[str, Any]:
    if isinstance(target, ast.Name):
        return {target.id: value}
    names = [e.id for e in target.elts]  # type: ignore[attr-defined]
    values = list(value)
    if len(values) != len(names):
        raise ValueError(f"cannot unpack {len(values)} values into {len(names)}")
    return dict(zip(names, values))


def _size(v: Any) -> int:
    return len(v) if isinstance(v, (str, bytes, list, tuple)) else 0


def _check_size(op: ast.operator, a: Any, b: Any) -> None:
    """Refuse what would build a huge value from the program's numbers (`[0] * f()`, `2 ** f()`), or text from
    a format the program wrote (`f() % 2` with f() = "%0800000000d")."""
    if isinstance(op, ast.Mod) and isinstance(a, (str, bytes)):
        raise ValueError("no %-formatting of text here")
    if isinstance(op, ast.Mult) and (_size(a) or _size(b)):
        n = b if _size(a) else a
        if isinstance(n, int) and max(_size(a), _size(b)) * max(n, 0) > MAX_ITEMS:
            raise ValueError(f"a sequence of over {MAX_ITEMS} items")
    if isinstance(op, ast.Pow) and type(a) in (int, bool) and type(b) in (int, bool) and abs(a) > 1 and b > 0:
        if abs(a).bit_length() * b > MAX_INT_BITS:
            raise ValueError(f"an integer of over {MAX_INT_BITS} bits")
    if isinstance(op, ast.LShift) and type(b) in (int, bool) and b > MAX_INT_BITS:
        raise ValueError(f"an integer of over {MAX_INT_BITS} bits")


def _call(fn: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    if fn in (range, bytes) and any(type(a) is int and abs(a) > MAX_ITEMS for a in args):
        raise ValueError(f"{fn.__name__} of over {MAX_ITEMS}")
    if fn in (math.factorial, math.comb, math.perm) and any(type(a) is int and abs(a) > MAX_FACTORIAL for a in args):
        raise ValueError(f"{fn.__name__} of over {MAX_FACTORIAL}")
    if fn is pow:
        if len(args) == 2:
            _check_size(ast.Pow(), *args)
        elif len(args) == 3 and type(args[2]) is int and args[2].bit_length() > MAX_INT_BITS // 10:
            raise ValueError("a modulus of over 10,000 bits")
    if fn is math.prod:
        return _prod(*args, **kwargs)
    start = args[1] if fn is sum and len(args) == 2 else kwargs.get("start") if fn is sum else None
    if isinstance(start, (list, tuple, str, bytes)):
        items = list(_bounded(args[0]))
        if len(items) > 10_000:  # sum of sequences copies the running total each time: quadratic
            raise ValueError("sum of over 10,000 sequences")
        args = [items, *args[1:]]
    out = fn(*args, **kwargs)
    if fn in (map, filter, zip, enumerate, reversed):
        out = list(_bounded(out))
    return out


def _prod(iterable: Any, *, start: Any = 1) -> Any:
    out = start
    for v in _bounded(iterable):
        out = out * v
        if type(out) is int and out.bit_length() > MAX_INT_BITS:
            raise ValueError(f"an integer of over {MAX_INT_BITS} bits")
    return out


def _bounded(it: Any) -> Any:
    for i, v in enumerate(it):
        if i >= MAX_ITEMS:
            raise ValueError(f"over {MAX_ITEMS} items")
        yield v
