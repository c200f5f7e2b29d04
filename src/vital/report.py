"""A static HTML gallery of visualizations: one row per target, one column per method.

Each cell shows the image, its transparency map (the RGBA PNG over a checkerboard, so that alpha is visible) and
its metrics; each row starts with thumbnails of the reference images. The page is plain HTML and CSS with
relative links to files inside its folder (copied there when they live elsewhere): it reads offline, from a
zip, or from any static file server, and fetches nothing.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import shutil
import urllib.parse
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vital.errors import VitalError
from vital.references.images import IMAGE_EXTENSIONS

TRANSPARENCY_SUFFIX = "_transparency"
THUMB = 112
MAX_REFERENCES = 9  # thumbnails per row: enough to see what the references are, short enough to scan the page

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; background: #fafafa; }
h1 { font-size: 1.4rem; }
table { border-collapse: collapse; }
table.metrics td, table.metrics th { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
table.metrics th { background: #eee; }
ul.notes { font-size: 0.8rem; color: #555; }
table.gallery > tbody > tr > th, table.gallery > tbody > tr > td, table.gallery > thead > tr > th {
  border: 1px solid #ddd; padding: 0.5rem; vertical-align: top; background: #fff; }
table.gallery > thead > tr > th { background: #eee; position: sticky; top: 0; }
.target { text-align: left; max-width: 10rem; }
.refs { display: grid; grid-template-columns: repeat(3, 56px); gap: 3px; }
.refs img { width: 56px; height: 56px; object-fit: cover; }
.pair { display: flex; gap: 6px; }
.pair figure { margin: 0; }
.pair img { width: 192px; height: 192px; object-fit: contain; display: block; }
figcaption { font-size: 0.7rem; color: #666; }
.checker { background-color: #fff;
  background-image: linear-gradient(45deg, #bbb 25%, transparent 25%), linear-gradient(-45deg, #bbb 25%, transparent 25%),
    linear-gradient(45deg, transparent 75%, #bbb 75%), linear-gradient(-45deg, transparent 75%, #bbb 75%);
  background-size: 16px 16px; background-position: 0 0, 0 8px, 8px -8px, -8px 0; }
dl.m { display: grid; grid-template-columns: max-content max-content; gap: 0 0.6rem; font-size: 0.75rem; margin: 0.3rem 0 0; }
dl.m dt { color: #666; } dl.m dd { margin: 0; font-variant-numeric: tabular-nums; }
.empty { color: #aaa; font-size: 0.8rem; }
img.embedding { max-width: 640px; }
"""


@dataclass
class GalleryEntry:
    """One visualization, flat: what a run folder, a `Result` or an evaluation row provides."""

    image: Path
    method: str
    target: str
    transparency: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    references: list[Path] = field(default_factory=list)


@dataclass
class GalleryCell:
    method: str
    image: Path
    transparency: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class GalleryRow:
    """One target (e.g. "class 1 · goldfish"): its reference images and one cell per method."""

    target: str
    cells: list[GalleryCell] = field(default_factory=list)
    references: list[Path] = field(default_factory=list)


def rows_from_entries(entries: Iterable[GalleryEntry]) -> list[GalleryRow]:
    """Group entries by target (first-seen order); a row's references are the union of its entries'."""
    rows: dict[str, GalleryRow] = {}
    for e in entries:
        row = rows.setdefault(e.target, GalleryRow(e.target))
        row.cells.append(GalleryCell(e.method, Path(e.image), Path(e.transparency) if e.transparency else None,
                                     dict(e.metrics)))
        row.references += [Path(p) for p in e.references if Path(p) not in row.references]
    return list(rows.values())


def _target_label(target: Any) -> str:
    """A run record's target (a string, a class index, or a dict such as {"kind", "index", "name"}) as text."""
    if isinstance(target, dict):
        if target.get("label"):
            return str(target["label"])
        parts = [str(target[k]) for k in ("kind", "layer", "index", "channel") if target.get(k) is not None]
        name = target.get("name")
        return " ".join(parts) + (f" · {name}" if name else "") if parts else json.dumps(target, sort_keys=True)
    if isinstance(target, int):
        return f"class {target}"
    return str(target)


def entries_from_run(run_dir: str | os.PathLike) -> list[GalleryEntry]:
    """Entries of one run folder as `Result.save` writes it: `record.json` lists, per target, its image, its
    transparency map and its references (files, or thumbnails of in-memory references); metrics written into the
    record by `vital eval`/`vital compare` (under "metrics", keyed by image name) are shown too."""
    run_dir = Path(run_dir)
    rec_path = run_dir / "record.json"
    if not rec_path.is_file():
        raise VitalError(f"{run_dir} is not a run folder: it has no record.json")
    try:
        rec = json.loads(rec_path.read_text())
    except json.JSONDecodeError as e:
        raise VitalError(f"{rec_path} is not valid JSON ({e.msg}); re-run to rewrite it") from e
    outputs = rec.get("outputs") if isinstance(rec, dict) else None
    if not outputs or not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise VitalError(f"run folder {run_dir} lists no outputs in record.json; re-run to rewrite it")
    refsets = rec.get("references") or [None] * len(outputs)
    metrics = rec.get("metrics") or {}
    out = []
    for i, o in enumerate(outputs):
        j = o.get("target_index", i)
        refset = refsets[j] if isinstance(j, int) and 0 <= j < len(refsets) else None
        refs = [_inside(run_dir, p) for p in o.get("reference_thumbnails", [])]
        if not refs and isinstance(refset, dict):
            # reference photos may live anywhere; they are only ever decoded as images and shown as thumbnails
            refs = [Path(f["file"]) for f in refset.get("files", []) if isinstance(f, dict) and "file" in f
                    and Path(f["file"]).suffix.lower() in IMAGE_EXTENSIONS and Path(f["file"]).is_file()]
        alpha = _inside(run_dir, o["transparency"]) if o.get("transparency") else None
        out.append(GalleryEntry(_inside(run_dir, o.get("image")), str(rec.get("method", run_dir.name)),
                                _target_label(o.get("label") or o.get("target")),
                                alpha if alpha is not None and alpha.is_file() else None,
                                dict(metrics.get(o["image"], {})) if isinstance(metrics, dict) else {}, refs))
    return out


def _inside(run_dir: Path, name: Any) -> Path:
    """A file named by a run record: a relative path that stays inside the run folder, never anything else (the
    record is data from disk, and the gallery copies what it names)."""
    if not isinstance(name, str) or not name:
        raise VitalError(f"{run_dir / 'record.json'} names an output that is not a file name ({name!r}); re-run to "
                         "rewrite it")
    path = (run_dir / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(run_dir.resolve()):
        raise VitalError(f"{run_dir / 'record.json'} names a file outside its run folder ({name}); a run's outputs "
                         "are inside it: re-run to rewrite the record")
    return path


def gallery_from_runs(run_dirs: Sequence[str | os.PathLike],
                      metrics: dict[str, dict[str, dict]] | None = None) -> list[GalleryRow]:
    """Gallery rows from run folders (see `entries_from_run`); `metrics` ({run folder: {image: metrics}}) are
    shown instead of those in the records."""
    rows = []
    for d in run_dirs:
        for e in entries_from_run(d):
            if metrics is not None:
                e.metrics = dict(metrics.get(str(d), {}).get(e.image.name, {}))
            rows.append(e)
    return rows_from_entries(rows)


class _Assets:
    """Makes every file the page shows reachable by a relative link inside `out_dir`."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir.resolve()
        self.assets = self.out_dir / "assets"

    @staticmethod
    def _name(src: Path, suffix: str | None = None) -> str:
        tag = hashlib.sha1(os.fsencode(src.resolve())).hexdigest()[:10]
        return f"{tag}_{src.stem}{suffix or src.suffix}"

    def _rel(self, p: Path) -> str:
        """The URL of a file relative to the page: percent-encoded bytes of the path, so that '#', '%', '?',
        spaces and names that are not UTF-8 all resolve."""
        return urllib.parse.quote(os.fsencode(Path(os.path.relpath(p, self.out_dir)).as_posix()))

    def link(self, src: Path) -> str:
        """A file inside out_dir is linked in place; one outside is copied into assets/."""
        src = Path(src)
        if not src.is_file():
            raise VitalError(f"gallery image {src} does not exist")
        if src.resolve().is_relative_to(self.out_dir):
            return self._rel(src.resolve())
        self.assets.mkdir(parents=True, exist_ok=True)
        dst = self.assets / self._name(src)
        if not dst.exists() or dst.stat().st_mtime < src.stat().st_mtime:
            shutil.copy2(src, dst)
        return self._rel(dst)

    def thumb(self, src: Path, size: int = THUMB) -> str | None:
        """A small JPEG of a (possibly large) reference photo; None when it cannot be read."""
        from vital.references.images import UNREADABLE, load_rgb

        src = Path(src)
        dst = self.assets / "thumbs" / self._name(src, ".jpg")
        if not dst.exists():
            try:
                im = load_rgb(src)
            except UNREADABLE as e:
                warnings.warn(f"gallery: cannot read reference image {src} ({type(e).__name__})", stacklevel=3)
                return None
            im.thumbnail((size, size))
            dst.parent.mkdir(parents=True, exist_ok=True)
            im.save(dst, quality=85)
        return self._rel(dst)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _esc(text: str) -> str:
    """HTML-escaped text; names that are not UTF-8 are shown with a replacement mark."""
    return html.escape(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


def _cell(cell: GalleryCell, assets: _Assets) -> str:
    e = _esc
    img = assets.link(cell.image)
    figs = [f'<figure><img src="{e(img)}" alt="{e(cell.method)}"><figcaption>image</figcaption></figure>']
    if cell.transparency is not None:
        alpha = assets.link(cell.transparency)
        figs.append(f'<figure><div class="checker"><img src="{e(alpha)}" alt="{e(cell.method)} transparency">'
                    "</div><figcaption>transparency</figcaption></figure>")
    metrics = "".join(f"<dt>{e(str(k))}</dt><dd>{e(_fmt(v))}</dd>" for k, v in cell.metrics.items())
    return f'<div class="pair">{"".join(figs)}</div>' + (f'<dl class="m">{metrics}</dl>' if metrics else "")


def write_gallery(out_dir: str | os.PathLike, rows: Sequence[GalleryRow], title: str = "vital gallery",
                  table: Any | None = None) -> Path:
    """Write `out_dir/report.html` (plus assets/): rows = targets, columns = methods in first-seen order.
    `table` is an `EvalTable` (anything with `to_html()`), shown above the gallery with its embedding plot."""
    from vital.folders import ensure_writable

    out = ensure_writable(out_dir)
    assets = _Assets(out)
    e = _esc
    methods = list(dict.fromkeys(c.method for r in rows for c in r.cells))
    parts = [f"<h1>{e(title)}</h1>"]
    if table is not None:
        parts.append(table.to_html())
        emb = getattr(table, "meta", {}).get("embedding")
        if emb and Path(emb).is_file():
            parts.append(f'<p><img class="embedding" src="{e(assets.link(Path(emb)))}" alt="t-SNE embedding"></p>')
    head = "".join(f"<th>{e(m)}</th>" for m in ["target", "references", *methods])
    body = []
    for row in rows:
        thumbs = [(p, assets.thumb(p)) for p in row.references[:MAX_REFERENCES]]
        refs = "".join(f'<img src="{e(t)}" alt="{e(p.name)}" title="{e(p.name)}">' for p, t in thumbs if t)
        cells = ["".join(_cell(c, assets) for c in row.cells if c.method == m) for m in methods]
        body.append(f'<tr><th class="target">{e(row.target)}</th><td><div class="refs">{refs}</div></td>'
                    + "".join(f"<td>{c}</td>" if c else '<td class="empty">—</td>' for c in cells) + "</tr>")
    parts.append(f'<table class="gallery"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
