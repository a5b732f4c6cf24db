"""The package map holds: no import circles between scalerl's modules, and no import points up a layer.

Read from the source with `ast`, so it sees imports inside functions too (a lazy import is still a dependency).
Layers, bottom up: shared < curvefit < generator_service < trainer_service < cli (curvefit and shared are
independent; the trainer may use the generator's engine library for inline evaluation).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "curvefit", "generator_service", "trainer_service", "cli")
# What each top-level package may import from scalerl.
ALLOWED = {
    "shared": {"shared"},
    "curvefit": {"curvefit"},
    "generator_service": {"shared", "generator_service"},
    "trainer_service": {"shared", "generator_service", "trainer_service"},
    "cli": set(PACKAGES),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return "scalerl." + ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("scalerl."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("scalerl."):
                continue
            # `from pkg import submodule` depends on the submodule
            for alias in node.names:
                out.add(f"{mod}.{alias.name}")
            out.add(mod)
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = {d for d in _imports(path, name) if d in files and d != name}
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles() -> None:
    graph = _graph()
    # A package's __init__ importing its own submodules is how a package works, not a circle worth breaking.
    graph = {m: {d for d in deps if not (d.startswith(m + ".") and m in graph)} for m, deps in graph.items()}
    assert _cycles(graph) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_upward_imports(package: str) -> None:
    graph = _graph()
    bad = sorted(
        f"{mod} -> {dep}"
        for mod, deps in graph.items()
        if mod.split(".")[1] == package
        for dep in deps
        if dep.split(".")[1] not in ALLOWED[package]
    )
    assert bad == []


def test_the_check_sees_a_circle() -> None:
    # The guard itself can fail: a two-module circle is found.
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]


def test_weight_transport_names_are_spelled_only_in_the_registry() -> None:
    # Code asks the registry what a transport needs; the names appear as literals only there (comments aside).
    names = ("zmq", "dist", "vllm-nccl", "vllm-gloo")
    allowed = {ROOT / "shared/wire/weights/registry.py", ROOT / "cli/run_config.py"}  # registry, config validation
    bad = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if path in allowed:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                is_str = isinstance(node, ast.Constant) and isinstance(node.value, str)
                if is_str and node.value in names:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert bad == []


def test_every_package_is_installed():
    # A subpackage missing from pyproject's list works in an editable install and is absent from a wheel.
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {_module_name(p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("__init__.py")}
    assert found == listed
