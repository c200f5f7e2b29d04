"""`vital compare`: every method on every target, judged with the paper's metrics, in a table and a gallery.

Each method runs its targets as one batch when it can (DeepInversion's BatchNorm statistics couple the samples of a
batch, so it runs one target at a time), each into its own run folder; then `vital.evaluate` scores all images and
`vital.pages.report` writes the side-by-side gallery.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vital.metrics.evaluation import EvalTable, Visual, evaluate
from vital.models.zoo import VisionModel
from vital.outputs.claim import ensure_writable
from vital.outputs.confine import relative_name
from vital.outputs.record import RunRecord
from vital.pages.report import gallery_from_runs, write_gallery
from vital.references.images import ReferenceSet
from vital.run.execute import visualize
from vital.targets import Class

UNBATCHED = {"deepinversion"}  # methods whose loss couples the samples of a batch


@dataclass
class Comparison:
    table: EvalTable
    run_dirs: list[Path]
    report: Path
    out: Path


def run_method(model: VisionModel, method: str, classes: Sequence[int], refs: dict[int, ReferenceSet],
               out: Path, overwrite: bool = False, **options) -> list[Path]:
    """Run `method` on `classes` (batched unless the method couples samples); returns the run folders (a run
    already there is replaced only with `overwrite`)."""
    groups = [[k] for k in classes] if method in UNBATCHED else [list(classes)]
    dirs = []
    for group in groups:
        d = out / method if len(groups) == 1 else out / method / f"class{group[0]:04d}"
        res = visualize(model, [Class(k) for k in group], [refs[k] for k in group], method=method, **options)
        res.save(d, overwrite=overwrite)
        dirs.append(d)
    return dirs


def visuals_from_runs(run_dirs: Sequence[Path]) -> list[Visual]:
    """The class visualizations listed in run folders' records."""
    out = []
    for d in run_dirs:
        rec = RunRecord.read(d)
        for o in rec.outputs:
            t = rec.target_of(o).target
            if isinstance(t, Class):
                alpha = output_path(d, o.transparency, rec) if o.transparency else None
                out.append(Visual(output_path(d, o.image, rec), t.index, rec.method, rec.model.name, alpha,
                                  o.label))
    return out


def output_path(run_dir: str | os.PathLike, name: str, rec: RunRecord) -> Path:
    """A file a run record names, inside its run folder (`vital.outputs.confine`)."""
    return Path(run_dir) / relative_name(name, rec.path or run_dir, "output")


def real_images(refs: dict[int, ReferenceSet], model: VisionModel) -> dict[int, list]:
    """The references of each class as [0,1] images, the real side of FID and of the embedding plot."""
    out = {}
    for k, r in refs.items():
        out[k] = list(r.files) + [model.denormalize(model.transform()(im)[None])[0].clamp(0, 1)
                                  for _, im in r.images]
    return out


def run_metrics(table: EvalTable, run_dirs: Sequence[Path]) -> dict[str, dict[str, dict]]:
    """{run folder: {image name: its ranks}}: what the gallery shows beside each image."""
    by_image = {pv["image"]: {k: v for k, v in pv.items() if k.endswith("rank")} for pv in table.per_visual
                if pv.get("image")}
    out = {}
    for d in run_dirs:
        rec = RunRecord.read(d)
        out[str(d)] = {o.image: by_image.get(str(output_path(d, o.image, rec)), {}) for o in rec.outputs}
    return out


def annotate_runs(table: EvalTable, run_dirs: Sequence[Path]) -> None:
    """Write each image's ranks into the records of runs this comparison made itself (shown by `vital report`)."""
    for d, metrics in run_metrics(table, run_dirs).items():
        rec = RunRecord.read(d)
        rec.metrics = metrics
        rec.write(d)


def write_table(table: EvalTable, out: Path) -> None:
    (out / "table.md").write_text(table.to_markdown() + "\n")
    table.to_csv(out / "table.csv")
    table.to_json(out / "table.json")


def compare(model: VisionModel, classes: Sequence[int], refs: dict[int, ReferenceSet],
            methods: Sequence[str] = ("vital", "maco", "fourier", "deepinversion"), out: str | os.PathLike = "out",
            judges: Sequence[str] = ("efficientnet_lite1", "efficientnet_lite2"), fid: bool = True,
            clip_weights: str | None = None, progress: bool = True,
            method_options: dict[str, dict] | None = None, overwrite: bool = False, **options) -> Comparison:
    """`options` apply to every method; `method_options[method]` override them for one method (e.g. its steps)."""
    out_dir = ensure_writable(out)
    run_dirs: list[Path] = []
    for method in methods:
        opts = {**options, **(method_options or {}).get(method, {})}
        run_dirs += run_method(model, method, classes, refs, out_dir, overwrite, progress=progress, **opts)
    visuals = visuals_from_runs(run_dirs)
    with torch.no_grad():
        table = evaluate(visuals, model, classifiers=judges, real_images=real_images(refs, model), fid=fid,
                         clip_weights=clip_weights, embedding_path=out_dir / "embedding.png", progress=progress)
    write_table(table, out_dir)
    annotate_runs(table, run_dirs)
    report = write_gallery(out_dir, gallery_from_runs(run_dirs), title=f"vital compare · {model.name}", table=table)
    return Comparison(table, run_dirs, report, out_dir)
