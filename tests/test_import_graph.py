"""The modules of src/vital import each other without a circle, and none imports the package's own `__init__`.

The graph is read from the source with ast: an edge for every `import vital.x` and `from vital.x import y` (to
`vital.x.y` where that is a module, else to `vital.x`), inside functions too (a deferred import is still a
dependency). Imports under `if TYPE_CHECKING:` are annotations only, never run, and are not counted.

Importing `vital.a.b` runs `vital/a/__init__.py` first, so it is an edge to `vital.a` too: a circle through a
package's `__init__` (one that re-exports a submodule) is a circle. Only the packages a module itself lives in are
left out (Python has begun running them before the module, and a submodule import inside them is no circle), and
the top package `vital`, which nothing may import (the last test)."""

from __future__ import annotations

import ast
from pathlib import Path

import vital

ROOT = Path(vital.__file__).parent



def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ["vital", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t and t not in modules:  # `import vital.x.y` of a name: its module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
                graph[name] |= _packages_run_first(t, name)
    return graph


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]  # vital.a, vital.a.b (never `vital` itself)


def _packages_run_first(target: str, importer: str) -> set[str]:
    """The packages whose `__init__` runs when `importer` imports `target`, less those `importer` lives in."""
    own = set(_ancestors(importer)) | {importer}
    return {p for p in _ancestors(target) if p not in own}


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[tuple[str, ...]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                out.append(tuple(sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_the_graph_reader_finds_a_circle_and_a_deferred_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [("a", "b", "c")]
    assert cycles({"a": {"b"}, "b": set()}) == []
    g = import_graph()
    assert "vital.relevance.readout" in g["vital.objectives.activation"]  # `from vital.relevance import readout`
    assert "vital.relevance.chain.build" in g["vital.relevance.chain.families"]
    assert "vital.run.execute" not in g["vital.outputs.run_files"]  # only under `if TYPE_CHECKING:`
    # `from vital.references.photos import ...` runs vital/references/__init__.py first: an edge to it too
    assert {"vital.references", "vital.references.photos"} <= g["vital.outputs.entries"]
    # a module's own packages are not edges of it
    assert "vital.relevance" not in g["vital.relevance.chain.families"]
    assert _packages_run_first("vital.a.b.c", "vital.a.d") == {"vital.a.b"}


def test_no_import_circle_in_src_vital():
    assert cycles(import_graph()) == []


def test_no_module_imports_the_top_package():
    graph = import_graph()
    assert {m for m, deps in graph.items() if "vital" in deps and m != "vital"} == set()
