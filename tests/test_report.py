"""vital.pages.report: the static HTML gallery, checked on disk and in a real headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import skimage
from PIL import Image

from vital.errors import VitalError
from vital.metrics.evaluation import EvalTable
from vital.pages.report import GalleryEntry, gallery_from_runs, rows_from_entries, write_gallery

DATA = Path(os.path.dirname(skimage.__file__)) / "data"
CHROMIUM = Path("/usr/bin/chromium")

# Appended to a copy of the page: once everything has loaded, record for each <img> whether it decoded, and
# whether the element around a transparency map paints a checkerboard.
CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0}));
  const checker = [...document.querySelectorAll('img[alt$="transparency"]')]
    .map(i => getComputedStyle(i.parentElement).backgroundImage);
  document.body.setAttribute('data-check', JSON.stringify({imgs, checker}));
});
</script>"""


class _Sources(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []
        self.check: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a["src"])
        if tag == "body" and "data-check" in a:
            self.check = a["data-check"]


def parse(html_text: str) -> _Sources:
    p = _Sources()
    p.feed(html_text)
    return p


def make_rgba(path: Path, size: int = 64) -> Path:
    rgb = np.asarray(Image.open(DATA / "astronaut.png").convert("RGB").resize((size, size)))
    alpha = np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    return path


def make_png(path: Path, source: str, size: int = 64) -> Path:
    Image.open(DATA / source).convert("RGB").resize((size, size)).save(path)
    return path


@pytest.fixture
def gallery(tmp_path):
    """A two-target, two-method gallery whose images live outside the output folder."""
    src = tmp_path / "runs"
    src.mkdir()
    entries = []
    for target, photo, refs in [("class 281 · tabby", "chelsea.png", ["chelsea.png", "rocket.jpg"]),
                                ("class 967 · espresso", "coffee.png", ["coffee.png"])]:
        for method in ("vital", "maco"):
            stem = f"{method}_{photo.split('.')[0]}"
            entries.append(GalleryEntry(
                make_png(src / f"{stem}.png", photo), method, target,
                make_rgba(src / f"{stem}_transparency.png") if method == "vital" else None,
                {"target rank": 1, "efficientnet_lite1 rank": 4}, [DATA / r for r in refs]))
    rows = rows_from_entries(entries)
    table = EvalTable(["n", "target top-1"], {"vital": {"n": 2, "target top-1": 100.0},
                                              "maco": {"n": 2, "target top-1": 50.0}}, notes=["a note"],
                      meta={"embedding": str(make_png(src / "tsne.png", "camera.png"))})
    out = tmp_path / "gallery"
    return write_gallery(out, rows, title="Test <gallery>", table=table)


def test_rows_group_entries_by_target():
    e = [GalleryEntry(Path("a.png"), "vital", "t1", references=[Path("r1.jpg")]),
         GalleryEntry(Path("b.png"), "maco", "t2"),
         GalleryEntry(Path("c.png"), "maco", "t1", references=[Path("r1.jpg"), Path("r2.jpg")])]
    rows = rows_from_entries(e)
    assert [r.target for r in rows] == ["t1", "t2"]
    assert [c.method for c in rows[0].cells] == ["vital", "maco"]
    assert rows[0].references == [Path("r1.jpg"), Path("r2.jpg")]


def test_gallery_page_links_only_files_inside_its_folder(gallery):
    page = gallery.read_text()
    srcs = parse(page).srcs
    # the embedding plot + 4 visualizations + 2 transparency maps + 3 reference thumbnails
    assert len(srcs) == 10 and "tsne" in srcs[0]
    for s in srcs:
        assert not s.startswith(("/", "http:", "https:", "file:")) and ".." not in s
        assert (gallery.parent / s).is_file(), s
    assert "http" not in page and "<script" not in page
    assert "Test &lt;gallery&gt;" in page and "class 967 · espresso" in page and "a note" in page
    assert page.count('class="checker"') == 2
    thumbs = [s for s in srcs if "/thumbs/" in s]
    assert len(thumbs) == 3 and all(max(Image.open(gallery.parent / t).size) <= 112 for t in thumbs)
    # the transparency map is copied unchanged, alpha included
    alpha = [s for s in srcs if "transparency" in s][0]
    assert Image.open(gallery.parent / alpha).mode == "RGBA"


def headless_check(page: Path, tmp_path: Path) -> dict:
    check = page.with_name("check.html")
    check.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chr'}",
           "--dump-dom", check.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    found = parse(out).check
    assert found, f"the check script did not run; chromium printed: {out[:500]}"
    return json.loads(found)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing: apt-get install -y chromium")
def test_gallery_renders_in_headless_chromium(gallery, tmp_path):
    result = headless_check(gallery, tmp_path)
    assert len(result["imgs"]) == 10
    assert all(i["ok"] for i in result["imgs"]), [i for i in result["imgs"] if not i["ok"]]
    assert len(result["checker"]) == 2 and all("linear-gradient" in c for c in result["checker"])
    # the check notices a broken image
    missing = next(i["src"] for i in result["imgs"] if "thumbs" in i["src"])
    (gallery.parent / missing).unlink()
    result = headless_check(gallery, tmp_path)
    assert [i["src"] for i in result["imgs"] if not i["ok"]] == [missing]


def test_gallery_from_run_folders(tmp_path, tiny_model):
    """Run folders exactly as `Result.save` writes them: file references and in-memory references."""
    import vital
    from vital.references.images import from_files
    from vital.references.photos import photo_references

    ref_dir = tmp_path / "refs"
    ref_dir.mkdir()
    shutil.copy(DATA / "coffee.png", ref_dir / "coffee.png")
    runs = []
    for method, refs in (("vital", from_files([ref_dir / "coffee.png"])), ("pixel", photo_references(967, n=3))):
        res = vital.visualize(tiny_model, vital.Class(7), refs, method=method, steps=2, progress=False)
        res.save(tmp_path / method)
        runs.append(tmp_path / method)
    rec = json.loads((tmp_path / "vital" / "record.json").read_text())
    rec["metrics"] = {"class0007.png": {"target rank": 1}}
    (tmp_path / "vital" / "record.json").write_text(json.dumps(rec))
    rows = gallery_from_runs(runs)
    assert len(rows) == 1 and rows[0].target == "7: c7"
    assert [(c.method, c.transparency is not None) for c in rows[0].cells] == [("vital", True), ("pixel", True)]
    assert rows[0].references[0] == ref_dir / "coffee.png" and len(rows[0].references) == 4
    assert rows[0].cells[0].metrics == {"target rank": 1} and rows[0].cells[1].metrics == {}
    page = write_gallery(tmp_path / "out", rows)
    assert all((page.parent / s).is_file() for s in parse(page.read_text()).srcs)


def test_gallery_errors_name_the_problem(tmp_path):
    with pytest.raises(VitalError, match="no record.json"):
        gallery_from_runs([tmp_path])
    rows = rows_from_entries([GalleryEntry(tmp_path / "missing.png", "vital", "t")])
    with pytest.raises(VitalError, match="does not exist"):
        write_gallery(tmp_path / "out", rows)
    img = make_png(tmp_path / "a.png", "coffee.png")
    rows = rows_from_entries([GalleryEntry(img, "vital", "t", references=[tmp_path / "gone.jpg", DATA / "coffee.png"])])
    with pytest.warns(UserWarning, match="gone.jpg"):
        page = write_gallery(tmp_path / "out", rows)
    assert len(parse(page.read_text()).srcs) == 2  # the image and the one readable reference


def test_gallery_links_files_already_inside_the_output_folder(tmp_path):
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    img = make_png(out / "runs" / "a.png", "rocket.jpg")
    page = write_gallery(out, rows_from_entries([GalleryEntry(img, "vital", "class 657")]))
    assert parse(page.read_text()).srcs == ["runs/a.png"] and not (out / "assets").exists()
