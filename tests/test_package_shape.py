"""The shape of src/vital that a maintainer relies on: a short top level, one-line package docstrings, no two
modules with the same file name (outside cli/, base.py aside), no package attribute that hides a submodule, and the
size bars (modules up to 400 lines, functions up to 60, few type-ignores)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import types
from collections import Counter
from pathlib import Path

import vital

ROOT = Path(vital.__file__).parent
SOURCES = sorted(ROOT.rglob("*.py"))


def test_the_top_level_holds_at_most_twelve_modules():
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= 12, top


def test_every_package_has_a_one_line_docstring():
    for init in ROOT.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.splitlines()) == 1, init.relative_to(ROOT)


def test_no_two_modules_share_a_file_name():
    names = Counter(p.name for p in SOURCES if "cli" not in p.relative_to(ROOT).parts[:1])
    shared = {n for n, k in names.items() if k > 1} - {"__init__.py", "__main__.py", "base.py"}
    assert not shared, sorted(shared)


def test_no_package_attribute_hides_a_submodule():
    """`vital.visualize` is the function and `vital.run.execute` its module: `import vital.x.y as m` always gives
    the module."""
    for info in pkgutil.walk_packages(vital.__path__, "vital."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    for info in [i for i in pkgutil.walk_packages(vital.__path__, "vital.") if i.ispkg] + [None]:
        package = vital if info is None else importlib.import_module(info.name)
        for sub in pkgutil.iter_modules(package.__path__):
            value = getattr(package, sub.name, None)
            assert value is None or isinstance(value, types.ModuleType), f"{package.__name__}.{sub.name}"


def _functions(tree: ast.AST):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_modules_and_functions_stay_small():
    ignores = 0
    for path in SOURCES:
        text = path.read_text()
        assert text.count("\n") <= 400, path.relative_to(ROOT)
        for f in _functions(ast.parse(text)):
            assert f.end_lineno - f.lineno + 1 <= 60, f"{path.relative_to(ROOT)}:{f.lineno} {f.name}"
        ignores += text.count("# type: ignore")
    assert ignores < 10
