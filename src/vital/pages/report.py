"""A static HTML gallery of visualizations: one row per target, one column per method.

Each cell shows the image, its transparency map (the RGBA PNG over a checkerboard, so that alpha is visible) and
its metrics; each row starts with thumbnails of the reference images. The page is plain HTML and CSS with
relative links to files inside its folder (copied there when they live elsewhere): it reads offline, from a
zip, or from any static file server, and fetches nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from vital.errors import VitalError
from vital.outputs.confine import inside, record_references
from vital.outputs.record import RECORD, RunRecord
from vital.pages.render import STYLESHEET, asset, render, url
from vital.references.images import IMAGE_EXTENSIONS

if TYPE_CHECKING:
    from vital.metrics.evaluation import EvalTable

THUMB = 112
MAX_REFERENCES = 9  # thumbnails per row: enough to see what the references are, short enough to scan the page



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


def entries_from_run(run_dir: str | os.PathLike) -> list[GalleryEntry]:
    """Entries of one run folder as `Result.save` writes it: its record lists, per target, its image, its
    transparency map and its references (files, or thumbnails of in-memory references); metrics written into the
    record by `vital eval`/`vital compare` (under "metrics", keyed by image name) are shown too. Every file the
    record names is confined (`vital.outputs.confine`): outputs to the run folder, reference files to the run folder, the
    store the record names, or files whose bytes still have the recorded SHA-256."""
    run_dir = Path(run_dir)
    if not RunRecord.present(run_dir):
        raise VitalError(f"{run_dir} is not a run folder: it has no {RECORD}")
    rec = RunRecord.read(run_dir)
    if not rec.outputs:
        raise VitalError(f"run folder {run_dir} lists no outputs in {RECORD}; re-run to rewrite it")
    where = run_dir / RECORD
    out = []
    for o in rec.outputs:
        refs = [inside(run_dir, p, where, "an output") for p in o.reference_thumbnails]
        refset = rec.reference_of(o)
        if not refs and refset is not None:
            refs = [p for p in record_references(refset, run_dir, where) if p.suffix.lower() in IMAGE_EXTENSIONS]
        alpha = inside(run_dir, o.transparency, where, "an output") if o.transparency else None
        metrics = (rec.metrics or {}).get(o.image, {})
        out.append(GalleryEntry(inside(run_dir, o.image, where, "an output"), rec.method,
                                o.label or o.target or str(rec.target_of(o).target),
                                alpha if alpha is not None and alpha.is_file() else None, dict(metrics), refs))
    return out


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
        """The URL of a file relative to the page (`vital.pages.render.url`)."""
        return url(Path(os.path.relpath(p, self.out_dir)).as_posix())

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


def _cell(cell: GalleryCell, assets: _Assets) -> dict[str, Any]:
    return {"method": cell.method, "image": assets.link(cell.image),
            "transparency": assets.link(cell.transparency) if cell.transparency is not None else None,
            "metrics": [(str(k), _fmt(v)) for k, v in cell.metrics.items()]}


def write_gallery(out_dir: str | os.PathLike, rows: Sequence[GalleryRow], title: str = "vital gallery",
                  table: EvalTable | None = None) -> Path:
    """Write `out_dir/report.html` (plus assets/): rows = targets, columns = methods in first-seen order.
    `table` is an `EvalTable` (columns, rows and notes), shown above the gallery with its embedding plot."""
    from vital.outputs.claim import ensure_writable

    out = ensure_writable(out_dir)
    assets = _Assets(out)
    methods = list(dict.fromkeys(c.method for r in rows for c in r.cells))
    emb = table.meta.get("embedding") if table is not None else None
    shown = []
    for row in rows:
        thumbs = [(p, assets.thumb(p)) for p in row.references[:MAX_REFERENCES]]
        shown.append({"target": row.target, "references": [{"src": t, "name": p.name} for p, t in thumbs if t],
                      "columns": [[_cell(c, assets) for c in row.cells if c.method == m] for m in methods]})
    page = render("report.html", title=title, kind="report", stylesheet=None, script=None,
                  css=Markup(asset(STYLESHEET)), table=table.shown() if table is not None else None,
                  embedding=assets.link(Path(emb)) if emb and Path(emb).is_file() else None, methods=methods,
                  rows=shown)
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
