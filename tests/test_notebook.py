"""examples/quickstart.ipynb runs end to end in a real Jupyter kernel (nbclient), with 2 steps per run instead of
its STEPS, and its results display as HTML: the class result with three inline images (visualization,
transparency map, references), the store with its patch grid, the evaluation as a table."""

from __future__ import annotations

import os
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


class Tags(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.tags: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def _html(cell) -> str:
    out = [o["data"]["text/html"] for o in cell.get("outputs", []) if "text/html" in o.get("data", {})]
    assert len(out) == 1, cell.source
    return out[0]


@pytest.mark.integration
def test_quickstart_notebook_runs_and_displays(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")  # committed without outputs
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert params.source.startswith("STEPS = ")
    params.source = "STEPS = 2"
    src = str(ROOT / "src")  # the kernel imports this checkout, as the tests do
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    cells = {c.source.splitlines()[-1]: c for c in nb.cells if c.cell_type == "code"}
    result = Tags(_html(cells["cat"]))
    assert result.tags.count("img") == 3 and "script" not in result.tags
    store = Tags(_html(cells["store"]))
    assert store.tags.count("img") == 8  # the first 8 channels' top patches
    table = Tags(_html(cells["table"]))
    assert "table" in table.tags and table.tags.count("tr") >= 2
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert "activation:" in printed and "high-frequency power:" in printed
