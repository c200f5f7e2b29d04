"""Path similarity (`vital.metrics.faithfulness`) for every visualization that run folders hold, class and channel
targets alike: what `vital eval --faithfulness` adds to its table and the atlas draws on each neuron page.

Each visualization is compared with its own run's references (rebuilt from the run record), split alternately into
anchor and held-out ceiling; the floor is the least-driving images of a pool of natural photographs (by default
seeded views of the photographs that installed packages ship, `natural_pool`). A VITAL run aligned its image to
those same references, so its anchor side is not unseen: for references the optimisation never saw, judge against
another set (bench/quality_neuron.py does, on a held-out half of the photos).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vital.errors import VitalError
from vital.metrics.evaluation import EvalTable
from vital.metrics.faithfulness import PathSimilarity, floor_images, path_similarity, split_references
from vital.models import VisionModel
from vital.outputs.record import RunRecord

COLUMN = "faithfulness"
POOL_VIEWS = 3  # seeded views per offline photograph in the default floor pool
NOTE = ("faithfulness: path similarity after Geirhos et al. 2024 (arXiv 2306.04719): per layer from the input to "
        "the unit, the Spearman correlation of per-channel mean activations with the unit's references; the share "
        "of the way from the floor (the least-driving natural photos) to the ceiling (held-out references) on the "
        "path averaged over layers, per method the mean over its visualizations (docs/concepts/faithfulness.md)")


@dataclass
class Scored:
    """One visualization and its path similarity."""

    run: Path
    image: Path
    method: str
    label: str
    kind: str  # "class" or "channel"
    path: PathSimilarity

    def as_dict(self) -> dict[str, Any]:
        return {"run": str(self.run), "image": str(self.image), "method": self.method, "label": self.label,
                "kind": self.kind, **self.path.as_dict()}


def natural_pool(views: int = POOL_VIEWS, seed: int = 0) -> list[torch.Tensor]:
    """Seeded views of every offline photograph as [0,1] tensors: natural images on every machine."""
    from torchvision.transforms.functional import to_tensor

    from vital.references.images import load_rgb
    from vital.references.photos import offline_photo_files
    from vital.references.photos import views as photo_views

    out = []
    for f in offline_photo_files():
        for im in photo_views(load_rgb(f), views, seed):
            out.append(to_tensor(im.convert("RGB").resize((160, 160))))
    if not out:
        raise VitalError("no offline photographs found for the floor: pass natural images with --floor")
    return out


def folder_pool(folder: str | os.PathLike) -> list[Path]:
    """The images of a folder, as the floor's pool."""
    from vital.references.images import from_folder

    return list(from_folder(folder, n=None).files)


def references01(model: VisionModel, refs: Any) -> torch.Tensor:
    """A `ReferenceSet` as [0,1] images (N, 3, size, size), in its order (strongest first for mined ones)."""
    return model.denormalize(refs.load(model.transform())).clamp(0, 1).cpu()


def run_model(rec: RunRecord, device: str | torch.device) -> VisionModel:
    """The model a run used, as `vital rerun` loads it."""
    from vital.models import load_model
    from vital.run.repeat import weights_argument

    return load_model(rec.model.name, weights_argument(rec.model), device)


def score_runs(run_dirs: Sequence[str | os.PathLike], model: VisionModel | None = None,
               device: str | torch.device = "cpu", pool: Sequence[Any] | None = None,
               progress: bool = False) -> list[Scored]:
    """The path similarity of every class and channel visualization in `run_dirs`. `model`: the runs' model (else
    each run's own, loaded from its record); `pool`: natural images for the floor (else `natural_pool()`)."""
    from tqdm.auto import tqdm

    from vital.compare import output_path
    from vital.run.repeat import references_from_record

    pool = list(pool) if pool is not None else natural_pool()
    out: list[Scored] = []
    models: dict[str, VisionModel] = {}
    for d in tqdm([Path(r) for r in run_dirs], desc="faithfulness", unit="run", disable=not progress):
        rec = RunRecord.read(d)
        if model is None and rec.model.name not in models:  # each network loaded once, not once per run
            models[rec.model.name] = run_model(rec, device)
        net = model or models[rec.model.name]
        refs_of: dict[int, torch.Tensor] = {}
        for o in rec.outputs:
            entry = rec.target_of(o)
            if entry.kind not in ("class", "channel"):
                continue
            if o.target_index not in refs_of:
                refs = references_from_record(rec.reference_of(o))
                if refs is None:
                    raise VitalError(f"run {d} has no references for {entry.label or entry.kind}: faithfulness "
                                     "compares a visualization with its unit's references")
                refs_of[o.target_index] = references01(net, refs)
            target = entry.target
            anchor, _ = split_references(refs_of[o.target_index])
            floor = floor_images(net, target, pool, len(anchor))
            image = output_path(d, o.image, rec)
            out.append(Scored(d, image, rec.method, o.label or entry.label, entry.kind,
                              path_similarity(net, target, [image], refs_of[o.target_index], floor)))
    if not out:
        raise VitalError("the run folders hold no class or channel visualizations to judge")
    return out


def add_faithfulness(table: EvalTable | None, scored: Sequence[Scored]) -> EvalTable:
    """`table` (or a new one, for channel runs alone) with the column "faithfulness" (per method the mean summary
    over its visualizations that have one) and its count, each visualization's value in `per_visual`, and every
    per-layer path in `meta["faithfulness"]`."""
    if table is None:
        table = EvalTable(["n"], {}, meta={"units": "faithfulness: share of the way from floor (0) to ceiling (1)"})
    table.columns += [COLUMN, f"{COLUMN} n"]
    by_method: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for s in scored:
        counts[s.method] = counts.get(s.method, 0) + 1
        if s.path.summary is not None:
            by_method.setdefault(s.method, []).append(s.path.summary)
    for method, n in counts.items():
        row = table.rows.setdefault(method, {"n": n})
        values = by_method.get(method, [])
        row[COLUMN] = sum(values) / len(values) if values else None
        row[f"{COLUMN} n"] = len(values)
    by_image = {pv.get("image"): pv for pv in table.per_visual}
    for s in scored:
        pv = by_image.get(str(s.image))
        if pv is None:
            pv = {"method": s.method, "target": s.label, "label": s.label, "image": str(s.image)}
            table.per_visual.append(pv)
        pv[COLUMN] = s.path.summary
    table.meta[COLUMN] = [s.as_dict() for s in scored]
    table.notes.append(NOTE)
    return table


def score_result(result: Any, model: VisionModel, pool: Sequence[Any] | None = None) -> list[PathSimilarity | None]:
    """The path similarity of each image of a `vital.Result` with its own references (None for an image without
    references, or of a direction), kept in `result.faithfulness` so that the result shows it in a notebook."""
    from vital.targets import Channel, Class

    pool = list(pool) if pool is not None else natural_pool()
    out: list[PathSimilarity | None] = []
    for image, target, refs in zip(result.images, result.targets, result.references, strict=True):
        if refs is None or not isinstance(target, (Class, Channel)):
            out.append(None)
            continue
        real = references01(model, refs)
        anchor, _ = split_references(real)
        out.append(path_similarity(model, target, image[None], real, floor_images(model, target, pool, len(anchor))))
    result.faithfulness = out
    return out
