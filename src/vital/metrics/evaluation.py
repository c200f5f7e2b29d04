"""Metrics for feature visualizations, as in the paper's tables: top-1/top-5 of the target class by the target
model and by independent judges, FID against real images of the same classes, CLIP zero-shot, t-SNE embeddings.

`evaluate` turns a list of `Visual`s (an image, its target class, the method that made it) into an `EvalTable`:
one row per method, one column per metric.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vital.errors import VitalError
from vital.metrics.classify import DEFAULT_JUDGES, ImageLike, load_judges, topk_accuracy
from vital.metrics.clip import ClipResult, clip_zero_shot
from vital.metrics.fid import FIDResult, InceptionFeatures
from vital.metrics.kid import kid_from_features
from vital.models import VisionModel
from vital.pages import display
from vital.pages.render import render

# The FID function stays in its module (`from vital.metrics.fid import fid`): a package attribute of the same
# name would hide the submodule `vital.metrics.fid`.
__all__ = ["ClipResult", "EvalTable", "FIDResult", "InceptionFeatures", "Visual", "clip_zero_shot", "evaluate",
           "topk_accuracy"]


@dataclass
class Visual:
    """One visualization to judge: an image (PNG path or (3,H,W) tensor in [0,1]) for `target_class`."""

    image: Path | str | torch.Tensor
    target_class: int
    method: str
    model: str = ""
    transparency_path: Path | None = None
    label: str = ""


@dataclass
class EvalTable:
    """Rows = methods, columns = metrics (accuracies in %). `per_visual` holds each visualization's ranks
    (1 = top-1) for the gallery; `notes` say how each number was obtained (sample sizes, skipped metrics)."""

    columns: list[str]
    rows: dict[str, dict[str, Any]]
    per_visual: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def _fmt(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    def to_markdown(self) -> str:
        head = ["method", *self.columns]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(self.columns)) + "|"]
        for method, row in self.rows.items():
            lines.append("| " + " | ".join([method, *(self._fmt(row.get(c)) for c in self.columns)]) + " |")
        return "\n".join(lines + [""] + [f"- {n}" for n in self.notes]) + "\n"

    def shown(self) -> dict[str, Any]:
        """The table as a page shows it: its columns, one row of formatted values per method, its notes."""
        return {"columns": list(self.columns), "notes": list(self.notes),
                "rows": [(m, [self._fmt(r.get(c)) for c in self.columns]) for m, r in self.rows.items()]}

    def to_html(self) -> str:
        """The table and its notes as an HTML fragment, from the template the gallery uses (escaped by it)."""
        return render("metrics_table.html", table=self.shown()).strip()

    def _repr_html_(self) -> str:  # Jupyter: the table as HTML
        return display.table_html(self)

    def to_csv(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["method", *self.columns])
            for method, row in self.rows.items():
                w.writerow([method, *("" if row.get(c) is None else row[c] for c in self.columns)])
        return path

    def to_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": self.rows, "per_visual": self.per_visual, "notes": self.notes,
                "meta": self.meta}

    def to_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _class_label(k: int, model: VisionModel | None) -> str:
    name = model.class_name(k) if model is not None and model.categories else None
    return f"class {k} · {name}" if name else f"class {k}"


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


class _Table:
    """An `EvalTable` being filled, metric by metric, with the visuals grouped by method (in first-seen order)."""

    def __init__(self, visuals: Sequence[Visual], namer: VisionModel | None):
        self.images = [v.image for v in visuals]
        self.targets = [int(v.target_class) for v in visuals]
        methods = list(dict.fromkeys(v.method for v in visuals))
        self.by_method = {m: [i for i, v in enumerate(visuals) if v.method == m] for m in methods}
        self.table = EvalTable(["n"], {m: {"n": len(idx)} for m, idx in self.by_method.items()}, meta={
            "units": "accuracies in %; ranks are 1-based (1 = top-1)"})
        self.table.per_visual = [
            {"method": v.method, "target": t, "label": v.label or _class_label(t, namer),
             "image": str(v.image) if not isinstance(v.image, torch.Tensor) else None}
            for v, t in zip(visuals, self.targets, strict=True)]

    def add_ranks(self, name: str, ranks: Sequence[int] | None) -> None:
        """Columns "<name> top-1" and "<name> top-5" (% of each method's visuals ranked within 1 and 5; empty
        without `ranks`) and each visual's "<name> rank"."""
        self.table.columns += [f"{name} top-1", f"{name} top-5"]
        for m, idx in self.by_method.items():
            own = [ranks[i] for i in idx] if ranks else []
            for k in (1, 5):
                self.table.rows[m][f"{name} top-{k}"] = _pct(sum(r <= k for r in own) / len(own)) if own else None
        for pv, r in zip(self.table.per_visual, ranks or [], strict=False):
            pv[f"{name} rank"] = r

    def note(self, text: str) -> None:
        self.table.notes.append(text)


def _score_classifiers(t: _Table, model: VisionModel | None, judges: Sequence[VisionModel], progress: bool) -> None:
    """Top-1/top-5 of the target class by the target model ("target") and by each judge."""
    t.table.meta["target_model"] = model.name if model is not None else None
    t.table.meta["judges"] = [j.name for j in judges]
    t.note(f"accuracies in %; target model: {t.table.meta['target_model'] or 'none given'}; "
           f"judges: {', '.join(t.table.meta['judges']) or 'none'}")
    for name, clf in ([("target", model)] if model is not None else []) + [(j.name, j) for j in judges]:
        t.add_ranks(name, topk_accuracy(clf, t.images, t.targets, progress=progress)["ranks"])


def _score_fid(t: _Table, real_images: Mapping[int, Sequence[ImageLike]] | None, features: InceptionFeatures,
               progress: bool) -> None:
    """FID and KID (mean ± spread over subsets) of each method's visuals against the real images of the classes
    they show, with the sample sizes: at the few images one class or neuron gives, FID is a biased small-sample
    value and KID is unbiased."""
    t.table.columns += ["FID", "KID", "FID/KID n (vis/real)"]
    if not real_images:
        t.note("FID skipped: no real images given (pass real images per class, e.g. --refs)")
    for m, idx in t.by_method.items():
        row = t.table.rows[m]
        row["FID"], row["KID"], row["FID/KID n (vis/real)"] = None, None, None
        classes = sorted({t.targets[i] for i in idx})
        reals = [im for k in classes for im in (real_images or {}).get(k, [])]
        missing = [k for k in classes if not (real_images or {}).get(k)]
        if real_images and missing:
            t.note(f"FID {m}: no real images for class(es) {missing}")
        if len(idx) < 2 or len(reals) < 2:
            if real_images:
                t.note(f"FID {m}: needs at least 2 visualizations and 2 real images (has {len(idx)} and "
                       f"{len(reals)})")
            continue
        vis = [t.images[i] for i in idx]
        r = features.fid(vis, reals, progress=progress)
        k = kid_from_features(features(vis), features(reals))
        row["FID"], row["FID/KID n (vis/real)"] = r.value, f"{r.n_a}/{r.n_b}"
        row["KID"] = f"{k.mean:.4f} ± {k.std:.4f}"
        t.note(f"{m}: {k.describe()}")
        if r.singular:
            t.note(f"{m}: {r.describe()}")


def _score_clip(t: _Table, weights: str | os.PathLike | None, arch: str, device, progress: bool) -> None:
    clip = clip_zero_shot(t.images, t.targets, weights, arch=arch, device=device, progress=progress)
    if clip.skipped:
        t.note(clip.skipped)
    t.table.meta["clip"] = {"arch": clip.arch, "weights": str(weights) if weights else None, "skipped": clip.skipped}
    t.add_ranks("CLIP", None if clip.skipped else clip.ranks)


def _embedding(t: _Table, judge: VisionModel | None, real_images: Mapping[int, Sequence[ImageLike]] | None,
               path: str | os.PathLike, progress: bool) -> None:
    """A t-SNE plot of the judge's penultimate features: real images first (below), then each method."""
    from vital.metrics.embedding import embedding_plot

    if judge is None:
        raise VitalError("an embedding plot needs a model: pass a target model or a classifier")
    real = [(im, k) for k, ims in (real_images or {}).items() for im in ims]
    groups = {"real": ([im for im, _ in real], [k for _, k in real])} if real else {}
    groups.update({m: ([t.images[i] for i in idx], [t.targets[i] for i in idx]) for m, idx in t.by_method.items()})
    count = sum(len(images) for images, _ in groups.values())
    if count < 3:  # t-SNE needs three points: the table stands without the plot
        t.note(f"no t-SNE embedding: it needs at least 3 images, got {count}")
        return
    names = {k: judge.class_name(k) for k in set(t.targets)}
    t.table.meta["embedding"] = str(embedding_plot(judge, groups, path, class_names=names, progress=progress))


def evaluate(visuals: Sequence[Visual], model: VisionModel | None = None,
             classifiers: Sequence[str | VisionModel] = DEFAULT_JUDGES,
             real_images: Mapping[int, Sequence[ImageLike]] | None = None, fid: bool = True,
             clip_weights: str | os.PathLike | None = None, clip_arch: str = "ViT-B-32",
             embedding_path: str | os.PathLike | None = None, device: str | torch.device | None = None,
             progress: bool = True) -> EvalTable:
    """Judge `visuals` method by method: target-model and judge top-1/top-5, FID against `real_images` of the
    same classes ({class: [paths or (3,H,W) tensors]}), CLIP zero-shot (skipped without `clip_weights`), and
    optionally a t-SNE plot of the first judge's penultimate features saved at `embedding_path`.

    The FID network and its features live for this call only (one `InceptionFeatures`): real images shared by
    several methods go through it once."""
    if not visuals:
        raise VitalError("nothing to evaluate: no visualizations given")
    device = device if device is not None else (model.device if model is not None else "cpu")
    judges = [c if isinstance(c, VisionModel) else load_judges([c], device)[0] for c in classifiers]
    t = _Table(visuals, model if model is not None else (judges[0] if judges else None))
    _score_classifiers(t, model, judges, progress)
    if fid:
        _score_fid(t, real_images, InceptionFeatures(device), progress)
    _score_clip(t, clip_weights, clip_arch, device, progress)
    if embedding_path is not None:
        _embedding(t, judges[0] if judges else model, real_images, embedding_path, progress)
    return t.table
