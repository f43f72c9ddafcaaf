"""The package's import graph: one direction, no circles, nothing reaches up into ``train``.

Every ``import amylm_jax...`` / ``from amylm_jax... import ...`` statement of the package
(module level and inside functions alike) is an edge; a strongly connected component of more
than one module is a circle. The implicit edge from a submodule to its own package
``__init__`` is not counted (Python runs the parent first by design).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "amylm_jax"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py") if "demo_corpus" not in p.parts}


def _imports(path: Path, known: set[str]) -> set[str]:
    """The package modules that ``path`` imports (resolved to modules, not attributes)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            # `from pkg import sub` imports the module pkg.sub; `from mod import attr` only mod.
            names = [n for n in names if n in known] or [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("amylm_jax") and name in known:
                out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        edges = _imports(path, known)
        # The parent packages of a module are not edges of it.
        parents = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
        graph[name] = {e for e in edges if e != name and e not in parents}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read():
    graph = _graph()
    assert "amylm_jax.train" in graph and "amylm_jax.checkpoint" in graph["amylm_jax.train"]
    assert "amylm_jax.report.rules" in graph["amylm_jax.report.health"]


def test_no_import_circles():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_imports_train():
    graph = _graph()
    users = sorted(m for m, edges in graph.items() if "amylm_jax.train" in edges)
    assert users == []
    known = set(graph)
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        assert "amylm_jax.train" not in _imports(path, known), path.name


@pytest.mark.parametrize("name", ["amylm_jax.report", "amylm_jax.evaluate"])
def test_subpackages_import_alone(name):
    import importlib

    assert importlib.import_module(name).main
