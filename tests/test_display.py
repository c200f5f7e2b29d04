"""Jupyter display (`_repr_html_`): the HTML is parsed, its inline PNGs decoded and compared with the pictures
they must show, and text with markup in it must arrive as text, never as tags."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import numpy as np
import torch
from conftest import TinyNet, noise_folder
from PIL import Image

import vital
from vital.metrics.evaluation import EvalTable
from vital.models import load_model
from vital.outputs.io import to_uint8
from vital.references.images import from_images

EVIL = '<script>alert("x")</script> & <b>'


class Page(HTMLParser):
    """Tags (with attributes) and text of an HTML fragment."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def images(self) -> list[tuple[Image.Image, str]]:
        out = []
        for tag, attrs in self.tags:
            if tag == "img":
                head, data = attrs["src"].split(",", 1)
                assert head == "data:image/png;base64"
                out.append((Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), attrs["alt"]))
        return out


def _model():
    torch.manual_seed(0)
    return load_model(TinyNet(), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), size=32, name="tiny",
                      categories=[EVIL if i == 1 else f"c{i}" for i in range(10)])


def _refs(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return from_images([Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(n)],
                       source="noise")


def _square(im: Image.Image, tile: int) -> np.ndarray:
    w, h = im.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return np.asarray(im.convert("RGB").crop(box).resize((tile, tile), Image.Resampling.BICUBIC))


def test_result_shows_image_transparency_and_references_per_target():
    refs = [_refs(8, 0), _refs(3, 1)]
    res = vital.visualize(_model(), [vital.Class(1), vital.Class(2)], refs, steps=2, progress=False)
    page = Page(res._repr_html_())
    assert "script" not in [t for t, _ in page.tags] and "b" not in [t for t, _ in page.tags]
    assert any(EVIL in t for t in page.text)  # the label arrives as text
    images = page.images()
    assert len(images) == 6  # two rows of: visualization, transparency map, references
    for i in range(2):
        vis, alpha, strip = (im for im, _ in images[3 * i: 3 * i + 3])
        expected = Image.fromarray(to_uint8(res.images[i])).resize(vis.size, Image.Resampling.BICUBIC)
        assert np.array_equal(np.asarray(vis), np.asarray(expected))
        assert alpha.size == vis.size and not np.array_equal(np.asarray(alpha), np.asarray(vis))
        shown = min(6, len(refs[i]))
        tile = strip.height
        assert strip.width == shown * tile
        for j in range(shown):  # each tile is its reference, in order
            got = np.asarray(strip)[:, j * tile:(j + 1) * tile]
            assert np.abs(got.astype(int) - _square(refs[i].images[j][1], tile).astype(int)).max() <= 1


def test_store_shows_summary_and_top_patches(tmp_path):
    model = _model()
    store = vital.mine(model, ["stage1.1"], noise_folder(tmp_path / "imgs", 6), k=3, out=tmp_path / "store",
                       progress=False)
    page = Page(store._repr_html_())
    text = " ".join(page.text)
    assert "stage1.1 (12 channels)" in text and "6 mined" in text
    images = page.images()
    assert len(images) == 8  # the first 8 of the layer's 12 channels, one strip each
    for c in (0, 7):
        strip, alt = images[c]
        assert alt.startswith(f"stage1.1:{c}:")
        patches = [im for _, im in store.references("stage1.1", c, kind="patches", n=8).images]
        tile = strip.height
        assert strip.width == len(patches) * tile
        first = np.asarray(strip)[:, :tile].astype(int)
        assert np.abs(first - _square(patches[0], tile).astype(int)).max() <= 1


def test_store_whose_images_moved_shows_summary_and_the_fix(tmp_path):
    vital.mine(_model(), ["stage1.1"], noise_folder(tmp_path / "imgs", 4), k=2, out=tmp_path / "store",
               progress=False)
    (tmp_path / "imgs").rename(tmp_path / "moved")
    page = Page(vital.MiningStore.load(tmp_path / "store")._repr_html_())
    assert page.images() == []
    text = " ".join(page.text)
    assert "stage1.1 (12 channels)" in text and "MiningStore.load(path, images=FOLDER)" in text


def test_eval_table_is_an_escaped_html_table():
    table = EvalTable(columns=["top-1", EVIL], rows={"vital": {"top-1": 80.0, EVIL: None}, EVIL: {"top-1": 12.5}},
                      notes=[f"note {EVIL}"])
    page = Page(table._repr_html_())
    tags = [t for t, _ in page.tags]
    assert "table" in tags and "script" not in tags and "b" not in tags
    cells = [t for t in page.text if t.strip()]
    assert cells[:3] == ["method", "top-1", EVIL]
    assert ["vital", "80.0", "–", EVIL, "12.5", "–"] == cells[3:9]
    assert f"note {EVIL}" in cells


def test_result_shows_its_faithfulness_once_judged():
    """After `score_result`, each row gains the path plot and its summary; an image without references says so."""
    from vital.metrics.faithful_runs import score_result

    model = _model()
    res = vital.visualize(model, [vital.Class(1), vital.Class(2)], [_refs(6, 0), None], method="fourier", steps=2,
                          progress=False)
    assert "faithfulness" not in res._repr_html_()  # not computed: not shown
    pool = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    paths = score_result(res, model, pool)
    assert paths[1] is None and paths[0] is not None
    page = Page(res._repr_html_())
    assert [t for t, a in page.tags if t == "svg" and a.get("class") == "path-plot"] == ["svg"]
    text = " ".join(page.text)
    summary = paths[0].summary
    assert ("faithfulness none" if summary is None else f"faithfulness {summary:.2f}") in text
    assert "not judged" in text
