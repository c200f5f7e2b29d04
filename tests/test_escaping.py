"""No page vital writes runs a script from its inputs: hostile text in every field a run record, a mining store
or a circuit can carry (labels, file names, layer names, channel and method names, metrics, references) goes
through `vital report` and `vital atlas` (the library functions) and comes out as text. The pages are parsed:
no script element other than the atlas's own, no on* attribute anywhere, and the hostile text shown escaped."""

from __future__ import annotations

import hashlib
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import vital
from vital.circuit import circuit, svg
from vital.metrics.evaluation import EvalTable
from vital.models import load_model
from vital.pages.atlas import build_atlas
from vital.pages.report import gallery_from_runs, write_gallery
from vital.references.mining import mine

SCRIPT = "<script>alert(1)</script>"
ONLOAD = "<svg onload=alert(1)>"
FILE = "<svg onload=alert(1)>.png"  # a file name cannot hold "/", so no closing tag
HOSTILE = (SCRIPT, ONLOAD)


class _Page(HTMLParser):
    """Every start tag with its attributes, and the text, of one page."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _check(page: Path, allowed_scripts: set[str] = frozenset()) -> str:
    """Assert that `page` creates no script (but `allowed_scripts` by src) and no on* attribute; its text."""
    parsed = _Page(page.read_text(encoding="utf-8"))
    for tag, attrs in parsed.tags:
        assert tag != "script" or attrs.get("src") in allowed_scripts, (page, tag, attrs)
        assert not any(k.startswith("on") for k in attrs), (page, tag, attrs)
        assert tag not in ("iframe", "object", "embed"), (page, tag)
    return "".join(parsed.text)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A real run, store and circuit of a small network, then edited by hand to carry hostile text everywhere."""
    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    model = load_model(net, size=32, name="net")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    store = mine(model, ["1", "3"], photos, k=2, out=root / "store", progress=False)
    res = vital.visualize(model, [vital.Channel("3", c) for c in range(2)], [store.references("3", c, n=2)
                                                                            for c in range(2)], steps=1, progress=False)
    res.save(root / "runs" / "run")
    found = circuit(model, "3", 0, store.references("3", 0, n=2), layers=["1"], depth=1, top=2)
    (root / "circ").mkdir()
    found.save(root / "circ" / "circuit.json")

    # the store: hostile image names (the files renamed to match), a hostile layer name
    files = json.loads((root / "store" / "files.json").read_text())
    for name in files:
        (photos / name).rename(photos / f"{SCRIPT.replace('/', '')}{name}")
    (root / "store" / "files.json").write_text(json.dumps([f"{SCRIPT.replace('/', '')}{n}" for n in files]))
    # the run record: every text field
    run = root / "runs" / "run"
    shutil.copy(photos / f"{SCRIPT.replace('/', '')}0.png", run / FILE)
    rec = json.loads((run / "record.json").read_text())
    rec["method"] = SCRIPT
    rec["model"]["name"] = "net"
    rec["targets"][0]["label"] = SCRIPT
    rec["outputs"][0]["label"] = ONLOAD
    rec["outputs"][1]["label"] = ""
    rec["outputs"][1]["target"] = SCRIPT
    rec["metrics"] = {rec["outputs"][0]["image"]: {SCRIPT: ONLOAD, ONLOAD: 1.5}}
    rec["references"][0]["source"] = SCRIPT
    rec["references"][0]["files"] = [{"file": str(run / FILE), "sha256": _sha(run / FILE)}]
    rec["references"][0]["origin"] = {"kind": "files", "list": SCRIPT}
    rec["recipe"][SCRIPT] = ONLOAD
    for o in rec["outputs"]:
        o["reference_thumbnails"] = []
    (run / "record.json").write_text(json.dumps(rec))
    # a second run folder whose target layer has a hostile name, and a circuit between hostile layers
    other = root / "runs" / "other"
    shutil.copytree(run, other)
    rec["targets"][1]["layer"] = ONLOAD
    (other / "record.json").write_text(json.dumps(rec))
    data = json.loads((root / "circ" / "circuit.json").read_text())
    data["relevance"] = SCRIPT
    data["layers"] = [ONLOAD]
    data["sources"] = {ONLOAD: [{**s, "layer": ONLOAD} for s in data["sources"]["1"]]}
    data["edges"] = [[ONLOAD, e[1], e[2], e[3], e[4]] for e in data["edges"]]
    (root / "circ" / "circuit.json").write_text(json.dumps(data))
    return root, data


def test_report_shows_hostile_text_as_text(hostile, tmp_path):
    root, _ = hostile
    table = EvalTable([SCRIPT, "n"], {ONLOAD: {SCRIPT: 1.0, "n": 2}}, notes=[SCRIPT], meta={})
    page = write_gallery(tmp_path / "report", gallery_from_runs([root / "runs" / "run"]), title=ONLOAD, table=table)
    text = _check(page)
    for s in HOSTILE:
        assert s in text  # shown, as text
    assert FILE in text or any(FILE in a.get("alt", "") for _, a in _Page(page.read_text()).tags)
    raw = page.read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw and "&lt;svg onload=alert(1)&gt;" in raw


def test_atlas_shows_hostile_text_as_text(hostile, tmp_path):
    root, _ = hostile
    index = build_atlas(tmp_path / "site", [root / "runs", root / "store", root / "circ"], progress=False)
    pages = sorted(index.parent.rglob("*.html"))
    assert len(pages) > 5
    seen = ""
    for page in pages:
        seen += _check(page, {"../assets/atlas.js"})
    for s in HOSTILE:
        assert s in seen
    assert SCRIPT.replace("/", "") + "0.png" in seen  # a store's image name, in a caption
    neuron = (index.parent / "neurons" / "3" / "0.html").read_text()
    assert "<svg" in neuron and "share of the relevance of 2 references (&lt;script&gt;" in neuron


def test_circuit_svg_escapes_every_label(hostile):
    _, data = hostile
    drawing = svg({**data, "layer": SCRIPT}, {(ONLOAD, data["sources"][ONLOAD][0]["channel"]): f'x" onclick="{SCRIPT}'})
    parsed = _Page(drawing)
    assert [t for t, _ in parsed.tags].count("svg") == 1
    assert not any(k.startswith("on") for _, a in parsed.tags for k in a)
    assert not any(t == "script" for t, _ in parsed.tags)
    assert ONLOAD in "".join(parsed.text) and SCRIPT in "".join(parsed.text)


@pytest.mark.parametrize(("field", "value"), [("references", SCRIPT), ("channel", ONLOAD), ("layers", [1]),
                                              ("sources", [SCRIPT]), ("edges", [[SCRIPT]])])
def test_a_circuit_with_text_where_numbers_belong_is_refused(hostile, tmp_path, field, value):
    """The issue's case: a circuit.json with script text in its number fields never reaches a page."""
    from vital.errors import VitalError

    root, data = hostile
    (tmp_path / "circ").mkdir()
    (tmp_path / "circ" / "circuit.json").write_text(json.dumps({**data, field: value}))
    with pytest.raises(VitalError, match=rf"circuit\.json: {field}") as e:
        build_atlas(tmp_path / "site", [root / "store", tmp_path / "circ"], progress=False)
    assert "\n" not in str(e.value)
