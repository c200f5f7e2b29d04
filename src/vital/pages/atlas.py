"""`vital atlas`: a static site to browse whole layers of neurons, from run folders, batch outputs, circuits and
mining stores.

    OUT/index.html                     the layers, with how many channels each has and how many are visualised
    OUT/layers/<layer>.html            every channel of a layer: a lazy-loaded thumbnail (the visualization, else the
                                       top reference patch), a filter by channel number, sorting by any metric
    OUT/neurons/<layer>/<c>.html       one neuron: visualization, transparency, top references with their boxes
                                       drawn on the source images, metrics, the run record, its circuit graph
    OUT/assets/...                     thumbnails and reference crops, made once
    OUT/atlas.json                     what each neuron page was built from, for incremental rebuilds

Sources are searched recursively: a folder with a run record is a run (every channel target in it is a neuron), one
with index.json a mining store, one with circuit.json a circuit. Everything is plain HTML, CSS and a few lines of
JavaScript with relative links, so it works from file:// without a server and fetches nothing. A rebuild redoes
only the neurons whose sources changed (and every index page, which is cheap).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from vital.circuit import CIRCUIT, Circuit, svg
from vital.errors import VitalError
from vital.outputs.claim import ensure_writable
from vital.outputs.confine import inside
from vital.outputs.io import write_json
from vital.outputs.record import RECORD, RunRecord
from vital.pages.render import STYLESHEET, asset, render, url
from vital.targets import Channel, safe_name

FORMAT = "vital-atlas/1"
THUMB = 128
REFS_SHOWN = 8



@dataclass
class Neuron:
    """One channel of a layer and what the sources say about it."""

    layer: str
    channel: int
    run: Path | None = None  # the run folder holding its visualization
    image: Path | None = None
    transparency: Path | None = None
    record: RunRecord | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    circuit: Path | None = None


def _page(template: str, path: Path, title: str, depth: int, **context: Any) -> None:
    """Write one page of the site from its template (`vital.pages.render`: escaped by construction)."""
    up = "../" * depth
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(template, title=title, kind="atlas", stylesheet=f"{up}assets/{STYLESHEET}", css="",
                           script=f"{up}assets/atlas.js" if template == "atlas_layer.html" else None, up=up,
                           **context), encoding="utf-8")


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
        self.paths: dict[str, dict[str, Any]] = {}  # "layer:channel" -> path similarity, with --faithfulness
        for src in sources:
            self._scan(Path(src))
        if not self.neurons and not self.stores:
            raise VitalError(f"no channel visualizations ({RECORD}) or mining stores (index.json) under "
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
            if RunRecord.present(d):
                self._add_run(d)
            if (d / CIRCUIT).is_file():
                graph = Circuit.read(d / CIRCUIT)
                self._neuron(graph.layer, graph.channel).circuit = d / CIRCUIT

    def _neuron(self, layer: str, channel: int) -> Neuron:
        return self.neurons.setdefault((layer, channel), Neuron(layer, channel))

    def _add_run(self, d: Path) -> None:
        rec = RunRecord.read(d)
        self.models.add(rec.model.name)
        where = d / RECORD
        for i, o in enumerate(rec.outputs):
            t = rec.target_of(o).target
            if not isinstance(t, Channel) or t.position is not None or o.copy:
                continue  # a neuron page shows a channel's whole-map visualization (its first copy)
            image = inside(d, o.image, where, "an output")
            if not image.is_file():
                continue
            n = self._neuron(t.layer, t.channel)
            n.run, n.image, n.record = d, image, rec
            alpha = inside(d, o.transparency, where, "an output") if o.transparency else None
            n.transparency = alpha if alpha is not None and alpha.is_file() else None
            if i < len(rec.final_loss):  # one loss per image of the batch, copies included
                n.metrics["final loss"] = float(rec.final_loss[i])
            for k, v in ((rec.metrics or {}).get(o.image) or {}).items():
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
        shown = [(n, n.image) for n in self.neurons.values() if n.layer == layer and n.image is not None]
        if len(shown) < 2 or self._store_for(layer) is None:
            return None
        key = json.dumps(sorted([str(image), image.stat().st_mtime_ns] for _, image in shown))
        if cached.get("key") == key:
            return cached
        from torchvision.transforms.functional import to_tensor

        from vital.metrics.kid import kid

        vis: list[Path | torch.Tensor] = [image for _, image in shown]
        real: list[Path | torch.Tensor] = [to_tensor(crop) for n, _ in shown
                                           for crop, _, _, _ in self._patches(layer, n.channel, 4)]
        if len(real) < 2:
            return None
        r = kid(vis, real)
        return {"key": key, "mean": r.mean, "std": r.std, "n_vis": r.n_a, "n_real": r.n_b}

    def build(self, progress: bool = True, kid: bool = False, faithfulness: bool = False, model: Any = None) -> Path:
        out = ensure_writable(self.out)
        assets = out / "assets"
        assets.mkdir(exist_ok=True)
        for name in (STYLESHEET, "atlas.js"):
            (assets / name).write_text(asset(name), encoding="utf-8")
        manifest_path = out / "atlas.json"
        old = _read(manifest_path) if manifest_path.is_file() else {}
        built = dict(old.get("neurons", {})) if isinstance(old, dict) and old.get("format") == FORMAT else {}
        faith_runs = {}
        if faithfulness:  # before the pages: the summary is a metric of the cards and part of a page's signature
            from vital.pages.atlas_faith import by_neuron, neuron_paths

            faith_runs = neuron_paths(self.neurons.values(), old.get("faithfulness", {}) if isinstance(old, dict)
                                      else {}, model, progress)
            self.paths = by_neuron(faith_runs)
            for (layer, c), n in self.neurons.items():
                summary = self.paths.get(f"{layer}:{c}", {}).get("summary")
                if summary is not None:
                    n.metrics["faithfulness"] = float(summary)
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
            rows.append((layer, len(cards), visualised, score, self._layer_faith(layer) if faithfulness else ""))
            self._layer_page(layer, cards)
        bar.close()
        self._index(rows)
        write_json({"format": FORMAT, "neurons": built, "kid": kids, "faithfulness": faith_runs}, manifest_path)
        return out / "index.html"

    def _signature(self, layer: str, c: int) -> list:
        """What a neuron page is made of, by file size and modification time: a change means rebuild it."""
        n = self.neurons.get((layer, c))
        files = [] if n is None else [n.image, n.transparency, n.run and n.run / RECORD, n.circuit]
        store = self._store_for(layer)
        if store is not None and store.path is not None:
            files.append(store.path / "index.json")
        out = []
        for f in files:
            if f is not None and Path(f).is_file():
                st = Path(f).stat()
                out.append([str(f), st.st_size, st.st_mtime_ns])
        path = self.paths.get(f"{layer}:{c}")
        return out + ([["faithfulness", path["summary"], path["visual"]]] if path is not None else [])

    def _thumb(self, layer: str, c: int) -> tuple[str, bool]:
        """The card's image (relative to the site root) and whether it is the visualization (else a patch)."""
        n = self.neurons.get((layer, c))
        dst = self.out / "assets" / "thumbs" / safe_name(layer) / f"{c}.jpg"
        rel = dst.relative_to(self.out).as_posix()
        image = n.image if n is not None else None
        is_vis = image is not None
        if dst.is_file() and (image is None or dst.stat().st_mtime_ns >= image.stat().st_mtime_ns):
            return rel, is_vis
        if image is not None:
            im = Image.open(image).convert("RGB")
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

    def _card(self, layer: str, c: int) -> dict[str, Any]:
        thumb, is_vis = self._thumb(layer, c)
        n = self.neurons.get((layer, c))
        metrics = dict(n.metrics) if n is not None else {}
        store = self._store_for(layer)
        if store is not None:
            patches = store.top_patches(layer, c)
            if patches:
                metrics["top score"] = patches[0][1]
                metrics["strength"] = patches[-1][1] / patches[0][1] if patches[0][1] > 0 else 0.0
        return {"channel": c, "visualised": is_vis, "data": [(_metric_key(k), f"{v:.6g}") for k, v in metrics.items()],
                "shown": " · ".join(f"{k} {v:.3g}" for k, v in metrics.items()),
                "thumb": f"../{url(thumb)}" if thumb else "", "href": f"../neurons/{url(safe_name(layer))}/{c}.html"}

    def _layer_page(self, layer: str, cards: list[dict[str, Any]]) -> None:
        keys = sorted({_metric_key(k) for n in self.neurons.values() if n.layer == layer for k in n.metrics}
                      | ({"top-score", "strength"} if self._store_for(layer) is not None else set()))
        _page("atlas_layer.html", self.out / "layers" / f"{safe_name(layer)}.html", f"{layer} · vital atlas", 1,
              layer=layer, cards=cards, sort_keys=[(_js_key(k), k) for k in ["channel", *keys]])

    def _neuron_page(self, layer: str, c: int, page: Path) -> None:
        n = self.neurons.get((layer, c))
        assets = self.out / "assets" / "neurons" / safe_name(layer)
        assets.mkdir(parents=True, exist_ok=True)
        up = "../../"

        def link(path: Path) -> str:
            return url(os.path.relpath(path, page.parent))

        figures = []
        if n is not None and n.image is not None:
            for what, src in (("visualization", n.image), ("transparency", n.transparency)):
                if src is not None:
                    dst = assets / f"{c}_{what}.png"
                    Image.open(src).save(dst)
                    figures.append({"what": what, "src": link(dst), "checker": what == "transparency"})
        patches = []
        for i, (crop, marked, name, score) in enumerate(self._patches(layer, c, REFS_SHOWN)):
            a, b = assets / f"{c}_ref{i}.jpg", assets / f"{c}_src{i}.jpg"
            crop.resize((160, 160), Image.Resampling.BICUBIC).save(a, quality=85)
            marked.resize((160, 160), Image.Resampling.BICUBIC).save(b, quality=85)
            patches.append({"source": link(b), "patch": link(a), "caption": f"{name} · {score:.3g}"})
        circuit = None
        if n is not None and n.circuit is not None:
            found = Circuit.read(n.circuit)
            links = {(lay, ch): f"{up}neurons/{url(safe_name(lay))}/{ch}.html"
                     for lay in self.layers() for ch in self.channels(lay)}  # every neuron has a page
            circuit = {"references": found.references, "relevance": found.relevance, "svg": svg(found, links)}
        record = relevance = None
        if n is not None and n.record is not None:
            shown = {k: v for k, v in n.record.as_json().items() if k != "loss_curve"}
            record = json.dumps(shown, indent=1, default=str)
            relevance = relevance_ran(n.record)
        _page("atlas_neuron.html", page, f"{layer}:{c} · vital atlas", 2, layer=layer, channel=c,
              layer_href=f"{up}layers/{url(safe_name(layer))}.html", figures=figures,
              metrics=" · ".join(f"{k} {v:.4g}" for k, v in n.metrics.items()) if n is not None else "",
              patches=patches, circuit=circuit, record=record, relevance=relevance,
              path_plot=self._path_plot(layer, c))

    def _path_plot(self, layer: str, c: int) -> dict[str, Any] | None:
        from vital.pages.path_plot import path_svg, summary_text

        path = self.paths.get(f"{layer}:{c}")
        return None if path is None else {"svg": path_svg(path), "text": summary_text(path)}

    def _layer_faith(self, layer: str) -> str:
        from vital.pages.atlas_faith import layer_mean

        mean, n = layer_mean(self.paths, layer)
        return "" if mean is None else f"{mean:.2f} (n = {n})"

    def _index(self, rows: list[tuple[str, int, int, dict | None, str]]) -> None:
        model = next(iter(self.models), "")
        shown = [{"layer": layer, "href": f"layers/{url(safe_name(layer))}.html", "channels": n, "visualised": v,
                  "kid": "" if k is None else f"{100 * k['mean']:.2f} ± {100 * k['std']:.2f} "
                                              f"(n = {k['n_vis']} / {k['n_real']})", "faithfulness": f}
                 for layer, n, v, k, f in rows]
        _page("atlas_index.html", self.out / "index.html", f"vital atlas · {model}", 0, model=model, rows=shown)


def relevance_ran(record: RunRecord) -> str | None:
    """Which relevance weighted the run's alignment, by which engine and why, as a neuron page says it; None for a
    run that used none (a baseline, `relevance="none"`)."""
    method = record.recipe.get("relevance")
    if method in (None, "none"):
        return None
    backend = record.recipe.get("relevance_backend")
    if backend is None:
        return f"relevance: {method} (the engine is not recorded: the run predates that)"
    return f"relevance: {method}, by the {backend} engine: {record.recipe.get('relevance_reason', '')}"


def _metric_key(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-") or "metric"


def _js_key(key: str) -> str:
    """A data-* attribute name as the dataset property JavaScript reads (top-score -> topScore)."""
    head, *rest = key.split("-")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def build_atlas(out: str | os.PathLike, sources: Sequence[str | os.PathLike], progress: bool = True,
                kid: bool = False, faithfulness: bool = False, model: Any = None) -> Path:
    """Build (or update) the atlas in `out` from `sources`; returns its index.html. `kid`: each layer's KID of its
    visualizations against their own top patches (Inception features: slower; cached between builds).
    `faithfulness`: each neuron's path similarity (a plot on its page, the layer's mean on the index; cached), with
    `model` (a `VisionModel`) or else each run's own model loaded from its record."""
    return Atlas(out, sources).build(progress, kid, faithfulness, model)
