"""The documentation cannot drift from the code: the site builds with warnings as errors, and every Python code
block of README.md and docs/ runs.

A page's blocks run in order in one namespace (a page is one script), in a scratch folder that holds what the
examples name: `photos/` (offline photographs) and `imagenet/train/` (an ImageNet-style class folder layout whose
classes 281 and 967 hold photos of a cat and of coffee). Runs are capped at 2 steps, without progress bars. A block
that must not run starts with `# not run: <reason>`; none does today."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import vital
from vital.metrics import classify
from vital.models import zoo
from vital.references.photos import offline_photo_files, photo_path
from vital.run import execute as visualize_module

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
NOT_RUN = "# not run:"
STEPS = 2


def python_blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


def test_every_block_is_found_and_the_not_run_list_is_empty():
    blocks = {p.relative_to(ROOT).as_posix(): python_blocks(p) for p in PAGES}
    assert sum(len(b) for b in blocks.values()) >= 10
    assert blocks["README.md"] and blocks["docs/getting-started.md"]
    skipped = [name for name, bs in blocks.items() for b in bs if b.startswith(NOT_RUN)]
    assert skipped == []


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in offline_photo_files()[:6]:
        shutil.copy(path, photos)
    train = tmp_path / "imagenet" / "train"
    for k in range(1000):  # the sorted-index rule needs the folders before the class too; most stay empty
        (train / f"n{k:08d}").mkdir(parents=True)
    for k, name in ((281, "chelsea.png"), (967, "coffee.png")):
        shutil.copy(photo_path(name), train / f"n{k:08d}" / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


_MODELS: dict = {}


@pytest.fixture
def short_runs(monkeypatch):
    """Every `vital.visualize` call of an example runs STEPS steps, quietly; a model loaded by name is loaded once
    for all pages (examples and judges alike: nothing in vital changes a model)."""
    real = visualize_module.visualize
    real_load = zoo.load_model

    def shared(model, *args, **kwargs):
        if not isinstance(model, str) or args or set(kwargs) - {"weights", "device"}:
            return real_load(model, *args, **kwargs)
        key = (model, kwargs.get("weights"), str(kwargs.get("device", "cpu")))
        if key not in _MODELS:
            _MODELS[key] = real_load(model, *args, **kwargs)
        return _MODELS[key]

    for module in (vital, vital.models, classify):
        monkeypatch.setattr(module, "load_model", shared)

    def capped(*args, **kwargs):
        kwargs["steps"] = STEPS
        kwargs["progress"] = False
        return real(*args, **kwargs)

    monkeypatch.setattr(vital, "visualize", capped)
    monkeypatch.setattr(visualize_module, "visualize", capped)


@pytest.mark.integration
@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_examples_run(page, scratch, short_runs):
    namespace: dict = {"__name__": "__docs__"}
    for i, block in enumerate(python_blocks(page)):
        if block.startswith(NOT_RUN):
            continue
        try:
            exec(compile(block, f"{page.name}[block {i}]", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{page.relative_to(ROOT)}, Python block {i} fails:\n{block}") from e


def test_site_builds_with_warnings_as_errors(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    site = tmp_path / "site"
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "vital class" in cli and "--refs" in cli and "vital mine" in cli  # generated from the parser
    api = (site / "reference" / "api" / "index.html").read_text()
    assert "vital.run.execute.visualize" in api and "MiningStore" in api  # generated from the docstrings
    bench = (site / "benchmarks" / "index.html").read_text()
    assert "Benchmark results" in bench
