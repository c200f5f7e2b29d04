"""`vital atlas`: a static site to browse whole layers of neurons, from run folders, batch outputs, circuits and
mining stores.

    OUT/index.html                     the layers, with how many channels each has and how many are visualised
    OUT/layers/<layer>.html            every channel of a layer: a lazy-loaded thumbnail (the visualization, else the
                                       top reference patch), a filter by channel number, sorting by any metric
    OUT/neurons/<layer>/<c>.html       one neuron: visualization, transparency, top references with their boxes
                                       drawn on the source images, metrics, the run record, its circuit graph
    OUT/assets/...                     thumbnails and reference crops, made once
    OUT/atlas.json                     what each neuron page was built from, for incremental rebuilds

Sources are searched recursively: a folder with record.json is a run (every channel target in it is a neuron), one
with index.json a mining store, one with circuit.json a circuit. Everything is plain HTML, CSS and a few lines of
JavaScript with relative links, so it works from file:// without a server and fetches nothing. A rebuild redoes
only the neurons whose sources changed (and every index page, which is cheap).
"""

from __future__ import annotations

import html
import json
import os
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from vital.errors import VitalError
from vital.folders import ensure_writable
from vital.io import write_json
from vital.targets import safe_name

FORMAT = "vital-atlas/1"
THUMB = 128
REFS_SHOWN = 8
CSS = """
body { font-family: system-ui, sans-serif; margin: 1.2rem; color: #222; background: #fafafa; }
a { color: #1f5f99; text-decoration: none; } a:hover { text-decoration: underline; }
.bar { display: flex; gap: 1rem; align-items: center; margin: 0.5rem 0 1rem; flex-wrap: wrap; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(136px, 1fr)); gap: 8px; }
.card { background: #fff; border: 1px solid #ddd; padding: 4px; font-size: 0.75rem; }
.card img { width: 128px; height: 128px; display: block; object-fit: cover; background: #eee; }
.card.patch img { outline: 2px dashed #bbb; outline-offset: -2px; }
.card .m { color: #666; }
.hidden { display: none; }
table.layers td, table.layers th { border: 1px solid #ccc; padding: 0.25rem 0.6rem; }
.pair { display: flex; gap: 10px; flex-wrap: wrap; }
.pair figure { margin: 0; } .pair img { width: 224px; height: 224px; image-rendering: auto; }
figcaption { font-size: 0.7rem; color: #666; }
.refs { display: flex; gap: 6px; flex-wrap: wrap; } .refs img { width: 160px; height: 160px; }
.checker { background-color: #fff;
  background-image: linear-gradient(45deg, #bbb 25%, transparent 25%), linear-gradient(-45deg, #bbb 25%, transparent 25%),
    linear-gradient(45deg, transparent 75%, #bbb 75%), linear-gradient(-45deg, transparent 75%, #bbb 75%);
  background-size: 16px 16px; background-position: 0 0, 0 8px, 8px -8px, -8px 0; }
pre { background: #fff; border: 1px solid #ddd; padding: 0.5rem; max-height: 24rem; overflow: auto; font-size: 0.7rem; }
"""
# filter: "12", "3,7", "10-20" (channel numbers); sort: by any data-metric of the cards
JS = """
function parseSet(text) {
  const parts = text.split(',').map(s => s.trim()).filter(s => s);
  if (!parts.length) return null;
  const keep = new Set();
  for (const p of parts) {
    const m = p.match(/^(\\d+)(?:-(\\d+))?$/);
    if (!m) return 'bad';
    const a = +m[1], b = m[2] === undefined ? a : +m[2];
    for (let c = Math.min(a, b); c <= Math.max(a, b) && keep.size < 100000; c++) keep.add(c);
  }
  return keep;
}
function applyFilter() {
  const keep = parseSet(document.getElementById('filter').value);
  let shown = 0;
  for (const card of document.querySelectorAll('.card')) {
    const on = keep === null || keep === 'bad' || keep.has(+card.dataset.channel);
    card.classList.toggle('hidden', !on);
    shown += on;
  }
  document.getElementById('shown').textContent = shown;
}
function applySort() {
  const key = document.getElementById('sort').value, grid = document.getElementById('grid');
  const cards = Array.from(grid.children);
  const value = c => { const v = c.dataset[key]; return v === undefined || v === '' ? NaN : +v; };
  const desc = key !== 'channel';
  cards.sort((a, b) => {
    const x = value(a), y = value(b);
    if (isNaN(x) && isNaN(y)) return +a.dataset.channel - +b.dataset.channel;
    if (isNaN(x)) return 1; if (isNaN(y)) return -1;
    return desc ? y - x : x - y;
  });
  for (const c of cards) grid.appendChild(c);
}
document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('filter').addEventListener('input', applyFilter);
  document.getElementById('sort').addEventListener('change', applySort);
});
"""


@dataclass
class Neuron:
    """One channel of a layer and what the sources say about it."""

    layer: str
    channel: int
    run: Path | None = None  # the run folder holding its visualization
    image: Path | None = None
    transparency: Path | None = None
    record: dict | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    circuit: Path | None = None


def _url(path: str) -> str:
    return urllib.parse.quote(os.fsencode(path))


def _esc(text: Any) -> str:
    return html.escape(str(text).encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


def _page(title: str, body: str, depth: int, script: bool = False) -> str:
    up = "../" * depth
    js = f'<script src="{up}assets/atlas.js"></script>' if script else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f'<link rel="stylesheet" href="{up}assets/atlas.css">{js}</head>\n<body>\n{body}\n</body></html>\n')


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VitalError(f"cannot read {path} ({type(e).__name__}); it is damaged") from e


class Atlas:
    """Collects neurons from sources, then writes the site (see the module docstring)."""

    def __init__(self, out: str | os.PathLike, sources: Sequence[str | os.PathLike]):
        if not sources:
            raise VitalError("give at least one source: a batch output, a run folder, a circuit or a mining store")
        self.out = Path(out)
        self.neurons: dict[tuple[str, int], Neuron] = {}
        self.stores: list[Any] = []
        self.models: set[str] = set()
        for src in sources:
            self._scan(Path(src))
        if not self.neurons and not self.stores:
            raise VitalError(f"no channel visualizations (record.json) or mining stores (index.json) under "
                             f"{', '.join(map(str, sources))}")
        if len(self.models) > 1:
            raise VitalError(f"the sources hold runs or stores of several models ({', '.join(sorted(self.models))}); "
                             "make one atlas per model")

    # ---- reading the sources ------------------------------------------------------------------------------------

    def _scan(self, root: Path) -> None:
        if not root.exists():
            raise VitalError(f"source {root} does not exist")
        found = [root] if root.is_dir() else []
        found += sorted(p for p in root.rglob("*") if p.is_dir()) if root.is_dir() else []
        for d in found:
            if d.name.startswith("."):
                continue  # leftovers of interrupted writes
            if (d / "index.json").is_file() and (d / "topk.pt").is_file():
                from vital.references.mining import MiningStore

                store = MiningStore.load(d)
                self.stores.append(store)
                self.models.add(store.index["model"])
            if (d / "record.json").is_file():
                self._add_run(d)
            if (d / "circuit.json").is_file():
                data = _read(d / "circuit.json")
                if isinstance(data, dict) and "layer" in data and "channel" in data:
                    self._neuron(data["layer"], int(data["channel"])).circuit = d / "circuit.json"

    def _neuron(self, layer: str, channel: int) -> Neuron:
        return self.neurons.setdefault((layer, channel), Neuron(layer, channel))

    def _add_run(self, d: Path) -> None:
        rec = _read(d / "record.json")
        if not isinstance(rec, dict) or not isinstance(rec.get("outputs"), list):
            return
        self.models.add(str(rec.get("model", {}).get("name")))
        targets = rec.get("targets", [])
        for i, o in enumerate(rec["outputs"]):
            j = o.get("target_index", i) if isinstance(o, dict) else i
            t = targets[j] if isinstance(j, int) and 0 <= j < len(targets) else None
            if not isinstance(t, dict) or t.get("kind") != "channel" or t.get("position") or o.get("copy", 0):
                continue  # a neuron page shows a channel's whole-map visualization (its first copy)
            n = self._neuron(str(t["layer"]), int(t["channel"]))
            image = (d / str(o.get("image", ""))).resolve()
            if not image.is_relative_to(d.resolve()) or not image.is_file():
                continue
            n.run, n.image, n.record = d, image, rec
            alpha = (d / str(o.get("transparency", ""))).resolve()
            n.transparency = alpha if alpha.is_relative_to(d.resolve()) and alpha.is_file() else None
            final = rec.get("final_loss")
            if isinstance(final, list) and i < len(final):
                n.metrics["final loss"] = float(final[i])
            for k, v in (rec.get("metrics", {}).get(o.get("image"), {}) or {}).items():
                if isinstance(v, (int, float)):
                    n.metrics[k] = float(v)

    def _store_for(self, layer: str):
        return next((s for s in self.stores if layer in s.layers), None)

    def layers(self) -> list[str]:
        names = [n for s in self.stores for n in s.layers] + [layer for layer, _ in self.neurons]
        return list(dict.fromkeys(names))

    def channels(self, layer: str) -> list[int]:
        store = self._store_for(layer)
        count = store.index["layers"][layer]["channels"] if store is not None else 0
        seen = {c for (lay, c) in self.neurons if lay == layer}
        return sorted(set(range(count)) | seen)

    # ---- writing ------------------------------------------------------------------------------------------------

    def _layer_kid(self, layer: str, cached: dict) -> dict | None:
        """KID of a layer's visualizations against their own top reference patches (4 per neuron), with its spread
        and the sample sizes; cached by the files it was computed from."""
        neurons = [n for n in self.neurons.values() if n.layer == layer and n.image is not None]
        if len(neurons) < 2 or self._store_for(layer) is None:
            return None
        key = json.dumps(sorted([str(n.image), n.image.stat().st_mtime_ns] for n in neurons))  # type: ignore[union-attr]
        if cached.get("key") == key:
            return cached
        from torchvision.transforms.functional import to_tensor

        from vital.evaluate.kid import kid

        vis = [n.image for n in neurons]
        real = [to_tensor(crop) for n in neurons for crop, _, _, _ in self._patches(layer, n.channel, 4)]
        if len(real) < 2:
            return None
        r = kid(vis, real)  # type: ignore[arg-type]
        return {"key": key, "mean": r.mean, "std": r.std, "n_vis": r.n_a, "n_real": r.n_b}

    def build(self, progress: bool = True, kid: bool = False) -> Path:
        out = ensure_writable(self.out)
        assets = out / "assets"
        assets.mkdir(exist_ok=True)
        (assets / "atlas.css").write_text(CSS, encoding="utf-8")
        (assets / "atlas.js").write_text(JS, encoding="utf-8")
        manifest_path = out / "atlas.json"
        old = _read(manifest_path) if manifest_path.is_file() else {}
        built = dict(old.get("neurons", {})) if isinstance(old, dict) and old.get("format") == FORMAT else {}
        layers = self.layers()
        todo = [(layer, c) for layer in layers for c in self.channels(layer)]
        rows = []
        kids: dict[str, dict] = {}
        bar = tqdm(total=len(todo), unit="neuron", desc="atlas", disable=not progress, dynamic_ncols=True)
        for layer in layers:
            cards = []
            for c in self.channels(layer):
                key = f"{layer}:{c}"
                signature = self._signature(layer, c)
                page = out / "neurons" / safe_name(layer) / f"{c}.html"
                if built.get(key) != signature or not page.is_file():
                    self._neuron_page(layer, c, page)
                    built[key] = signature
                cards.append(self._card(layer, c))
                bar.update(1)
            visualised = sum(1 for (lay, _), n in self.neurons.items() if lay == layer and n.image is not None)
            score = self._layer_kid(layer, (old.get("kid") or {}).get(layer, {}) if isinstance(old, dict) else {}
                                    ) if kid else None
            if score is not None:
                kids[layer] = score
            rows.append((layer, len(cards), visualised, score))
            self._layer_page(layer, cards)
        bar.close()
        self._index(rows)
        write_json({"format": FORMAT, "neurons": built, "kid": kids}, manifest_path)
        return out / "index.html"

    def _signature(self, layer: str, c: int) -> list:
        """What a neuron page is made of, by file size and modification time: a change means rebuild it."""
        n = self.neurons.get((layer, c))
        files = [] if n is None else [n.image, n.transparency, n.run and n.run / "record.json", n.circuit]
        store = self._store_for(layer)
        if store is not None and store.path is not None:
            files.append(store.path / "index.json")
        out = []
        for f in files:
            if f is not None and Path(f).is_file():
                st = Path(f).stat()
                out.append([str(f), st.st_size, st.st_mtime_ns])
        return out

    def _thumb(self, layer: str, c: int) -> tuple[str, bool]:
        """The card's image (relative to the site root) and whether it is the visualization (else a patch)."""
        n = self.neurons.get((layer, c))
        dst = self.out / "assets" / "thumbs" / safe_name(layer) / f"{c}.jpg"
        rel = dst.relative_to(self.out).as_posix()
        is_vis = n is not None and n.image is not None
        if dst.is_file() and (not is_vis or dst.stat().st_mtime_ns >= n.image.stat().st_mtime_ns):  # type: ignore[union-attr]
            return rel, is_vis
        if is_vis:
            im = Image.open(n.image).convert("RGB")  # type: ignore[union-attr, arg-type]
        else:
            crops = self._patches(layer, c, 1)
            if not crops:
                return "", False
            im = crops[0][0]
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.resize((THUMB, THUMB), Image.Resampling.BICUBIC).save(dst, quality=85)
        return rel, is_vis

    def _patches(self, layer: str, c: int, k: int) -> list[tuple[Image.Image, Image.Image, str, float]]:
        """Up to k top patches of channel c: (crop, source image with the box drawn, file name, score)."""
        store = self._store_for(layer)
        if store is None:
            return []
        from vital.references.images import UNREADABLE

        out = []
        for i, score, box in store.patch_sources(layer, c)[:k]:
            name = store.files[i] or f"#{i}"
            try:
                pixels = store.pixels(i)
            except (VitalError, *UNREADABLE):
                continue
            crop = pixels.crop(box)
            marked = pixels.copy()
            ImageDraw.Draw(marked).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(255, 40, 40), width=3)
            out.append((crop, marked, name, score))
        return out

    def _card(self, layer: str, c: int) -> str:
        thumb, is_vis = self._thumb(layer, c)
        n = self.neurons.get((layer, c))
        metrics = dict(n.metrics) if n is not None else {}
        store = self._store_for(layer)
        if store is not None:
            patches = store.top_patches(layer, c)
            if patches:
                metrics["top score"] = patches[0][1]
                metrics["strength"] = patches[-1][1] / patches[0][1] if patches[0][1] > 0 else 0.0
        attrs = "".join(f' data-{_metric_key(k)}="{v:.6g}"' for k, v in metrics.items())
        shown = " · ".join(f"{k} {v:.3g}" for k, v in metrics.items())
        img = f'<img loading="lazy" src="../{_url(thumb)}" alt="channel {c}">' if thumb else ""
        href = f"../neurons/{_url(safe_name(layer))}/{c}.html"
        kind = "card" if is_vis else "card patch"
        return (f'<div class="{kind}" data-channel="{c}"{attrs}><a href="{href}">{img}<b>{c}</b></a>'
                f'<div class="m">{_esc(shown)}</div></div>')

    def _layer_page(self, layer: str, cards: list[str]) -> None:
        keys = sorted({_metric_key(k) for n in self.neurons.values() if n.layer == layer for k in n.metrics}
                      | ({"top-score", "strength"} if self._store_for(layer) is not None else set()))
        options = "".join(f'<option value="{_js_key(k)}">{_esc(k)}</option>' for k in ["channel", *keys])
        body = (f'<p><a href="../index.html">all layers</a></p><h1>{_esc(layer)}</h1>'
                f'<div class="bar"><label>channels <input id="filter" placeholder="e.g. 12 or 10-20,33"></label>'
                f'<label>sort by <select id="sort">{options}</select></label>'
                f'<span><span id="shown">{len(cards)}</span> of {len(cards)} shown; dashed: no visualization yet '
                f'(top reference patch)</span></div><div class="grid" id="grid">{"".join(cards)}</div>')
        path = self.out / "layers" / f"{safe_name(layer)}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_page(f"{layer} · vital atlas", body, 1, script=True), encoding="utf-8")

    def _neuron_page(self, layer: str, c: int, page: Path) -> None:
        n = self.neurons.get((layer, c))
        assets = self.out / "assets" / "neurons" / safe_name(layer)
        assets.mkdir(parents=True, exist_ok=True)
        up = "../../"
        parts = [f'<p><a href="{up}index.html">all layers</a> · <a href="{up}layers/{_url(safe_name(layer))}.html">'
                 f'{_esc(layer)}</a></p><h1>{_esc(layer)} : {c}</h1>']
        figs = []
        if n is not None and n.image is not None:
            for what, src in (("visualization", n.image), ("transparency", n.transparency)):
                if src is None:
                    continue
                dst = assets / f"{c}_{what}.png"
                Image.open(src).save(dst)
                wrap = ('<div class="checker">{}</div>' if what == "transparency" else "{}").format(
                    f'<img src="{_url(os.path.relpath(dst, page.parent))}" alt="{what}">')
                figs.append(f"<figure>{wrap}<figcaption>{what}</figcaption></figure>")
        else:
            figs.append('<p class="m">not visualised yet: run <code>vital batch</code> on this layer and rebuild.</p>')
        parts.append(f'<div class="pair">{"".join(figs)}</div>')
        if n is not None and n.metrics:
            parts.append("<p>" + " · ".join(f"{_esc(k)} {v:.4g}" for k, v in n.metrics.items()) + "</p>")
        patches = self._patches(layer, c, REFS_SHOWN)
        if patches:
            cells = []
            for i, (crop, marked, name, score) in enumerate(patches):
                a, b = assets / f"{c}_ref{i}.jpg", assets / f"{c}_src{i}.jpg"
                crop.resize((160, 160), Image.Resampling.BICUBIC).save(a, quality=85)
                marked.resize((160, 160), Image.Resampling.BICUBIC).save(b, quality=85)
                cells.append(f'<figure><img src="{_url(os.path.relpath(b, page.parent))}" alt="source {i}">'
                             f'<img src="{_url(os.path.relpath(a, page.parent))}" alt="patch {i}">'
                             f"<figcaption>{_esc(name)} · {score:.3g}</figcaption></figure>")
            parts.append(f'<h2>Top references</h2><div class="refs">{"".join(cells)}</div>')
        if n is not None and n.circuit is not None:
            from vital.circuit import svg

            data = _read(n.circuit)
            links = {(lay, ch): f"{up}neurons/{_url(safe_name(lay))}/{ch}.html"
                     for lay in self.layers() for ch in self.channels(lay)}  # every neuron has a page
            parts.append(f"<h2>Circuit</h2><p>share of the relevance of {data.get('references')} references "
                         f"({_esc(data.get('relevance'))}) at each upstream layer</p>{svg(data, links)}")
        if n is not None and n.record is not None:
            record = {k: v for k, v in n.record.items() if k not in ("loss_curve",)}
            parts.append(f"<h2>Run record</h2><pre>{_esc(json.dumps(record, indent=1, default=str))}</pre>")
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(_page(f"{layer}:{c} · vital atlas", "".join(parts), 2), encoding="utf-8")

    def _index(self, rows: list[tuple[str, int, int, dict | None]]) -> None:
        def kid_cell(k: dict | None) -> str:
            return "" if k is None else (f"{100 * k['mean']:.2f} ± {100 * k['std']:.2f} "
                                         f"(n = {k['n_vis']} / {k['n_real']})")

        body = "".join(f'<tr><td><a href="layers/{_url(safe_name(layer))}.html">{_esc(layer)}</a></td><td>{n}</td>'
                       f"<td>{v}</td><td>{kid_cell(k)}</td></tr>" for layer, n, v, k in rows)
        model = next(iter(self.models), "")
        page = (f'<h1>vital atlas · {_esc(model)}</h1><table class="layers"><tr><th>layer</th><th>channels</th>'
                f"<th>visualised</th><th>KID ×100 vs own top patches (n vis / real)</th></tr>{body}</table>"
                "<p>KID (with <code>vital atlas --kid</code>): the layer's visualizations against their own top "
                "reference patches, 4 per neuron, in Inception space; unbiased at these sample sizes, spread over "
                "subsets.</p>")
        (self.out / "index.html").write_text(_page(f"vital atlas · {model}", page, 0), encoding="utf-8")


def _metric_key(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-") or "metric"


def _js_key(key: str) -> str:
    """A data-* attribute name as the dataset property JavaScript reads (top-score -> topScore)."""
    head, *rest = key.split("-")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def build_atlas(out: str | os.PathLike, sources: Sequence[str | os.PathLike], progress: bool = True,
                kid: bool = False) -> Path:
    """Build (or update) the atlas in `out` from `sources`; returns its index.html. `kid`: each layer's KID of its
    visualizations against their own top patches (Inception features: slower; cached between builds)."""
    return Atlas(out, sources).build(progress, kid)
