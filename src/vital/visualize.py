"""`vital.visualize`: run a method on one or many targets (one batch) and get a `Result` to save or inspect."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image

from vital import display
from vital.errors import VitalError
from vital.io import (
    contact_sheet,
    loss_curve,
    save_png,
    save_rgba,
    to_uint8,
    transparency_rgba,
    versions,
    write_json,
)
from vital.methods import RunOptions, build_recipe, split_options
from vital.models.zoo import VisionModel, load_model
from vital.optimize import optimize
from vital.outputs import save_run
from vital.references.images import UNREADABLE, ReferenceSet, load_rgb
from vital.targets import Channel, Class, Direction, Target


@dataclass
class Result:
    """Visualizations of a batch of targets, with everything needed to save, judge and reproduce them."""

    images: torch.Tensor  # (B, 3, H, W) in [0, 1]
    grad_accumulator: torch.Tensor  # (B, H, W)
    history: torch.Tensor  # (steps, B) per-sample loss
    targets: list[Target]
    labels: list[str]
    references: list[ReferenceSet | None]
    record: dict = field(default_factory=dict)
    paths: dict[str, list[Path]] = field(default_factory=dict)
    copies: list[int] = field(default_factory=list)  # each image's copy number, when targets have several

    def slug(self, i: int) -> str:
        """The file-name stem of image i: its target's, with the copy number when there are several."""
        return self.targets[i].slug() + (f"_v{self.copies[i]}" if self.copies else "")

    def transparency(self, i: int):
        return transparency_rgba(self.images[i], self.grad_accumulator[i])

    def _repr_html_(self) -> str:  # Jupyter: images, transparency maps and references side by side
        return display.result_html(self)

    def save(self, out_dir: str | os.PathLike, sheet: bool = True, overwrite: bool = False) -> dict[str, list[Path]]:
        """Write `<target>.png`, `<target>_transparency.png` (RGBA), `record.json` and `contact_sheet.png` into
        `out_dir` as one folder (`vital.outputs`: written aside, then renamed into place). A folder holding another
        run is replaced only with `overwrite`."""
        final = Path(out_dir).expanduser().absolute() if str(out_dir).strip() else Path("")
        written = save_run(out_dir, lambda folder: self._write(folder, sheet), overwrite)
        self.paths = {k: [final / p.name for p in v] for k, v in written.items()}
        return self.paths

    def _write(self, out: Path, sheet: bool) -> dict[str, list[Path]]:
        images, alphas, rows, outputs = [], [], [], []
        for i, t in enumerate(self.targets):
            stem = self.slug(i)
            images.append(save_png(self.images[i], out / f"{stem}.png"))
            rgba = self.transparency(i)
            alphas.append(save_rgba(rgba, out / f"{stem}_transparency.png"))
            refs = self.references[i]
            ref_imgs = _reference_thumbnails(refs) if refs is not None else []
            thumbs = []
            if refs is not None and refs.images:  # in-memory references: keep small copies to show beside the image
                (out / "references").mkdir(exist_ok=True)
                for j, im in enumerate(ref_imgs):
                    path = out / "references" / f"{stem}_{j:02d}.jpg"
                    im.convert("RGB").resize((112, 112), Image.Resampling.BICUBIC).save(path, quality=90)
                    thumbs.append(str(path.relative_to(out)))
            rows.append((self.labels[i], Image.fromarray(to_uint8(self.images[i])), Image.fromarray(rgba, "RGBA"),
                         ref_imgs))
            per = max(self.copies) + 1 if self.copies else 1
            outputs.append({"target": str(t), "target_index": i // per, "copy": i % per, "label": self.labels[i],
                            "image": images[-1].name,
                            "transparency": alphas[-1].name, "reference_thumbnails": thumbs})
        record = dict(self.record)
        record["outputs"] = outputs
        paths = {"images": images, "transparency": alphas, "record": [write_json(record, out / "record.json")]}
        if sheet:
            paths["sheet"] = [contact_sheet(rows, out / "contact_sheet.png")]
        return paths


def _reference_thumbnails(refs: ReferenceSet, n: int = 6) -> list[Image.Image]:
    out = [im for _, im in refs.images[:n]]
    for p in refs.files:
        if len(out) >= n:
            break
        try:
            out.append(load_rgb(p))
        except UNREADABLE:
            continue
    return out


def _as_list(x, n: int | None = None) -> list:
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x] * (n or 1)


def visualize(model: VisionModel | str, targets: Target | Sequence[Target],
              references: ReferenceSet | Sequence[ReferenceSet | None] | None = None, *, method: str = "vital",
              steps: int | None = None, setting: int = 1, seed: int = 0, progress: bool = True,
              **options) -> Result:
    """Visualise `targets` (a `Class`, a `Channel`, or a list optimised together as one batch).

    `references`: one `ReferenceSet` for all targets or one per target. Other keyword options are the loop's
    (`vital.methods.RunOptions`: tv_l2, tv_l1, l2, jitter, flip, lr, warmup) and the method's own (VITAL's:
    layers, layer_weights, feat_dist, relevance, mask, target_weight, unweighted, param; `vital.methods.option_names`
    lists them); an option the method does not know is an error."""
    if isinstance(model, str):
        model = load_model(model)
    targets = _as_list(targets)
    if not targets:
        raise VitalError("no targets given")
    refs = _as_list(references, len(targets))
    if len(refs) != len(targets):
        raise VitalError(f"{len(targets)} targets but {len(refs)} reference sets; give one per target or one for all")
    for t in targets:
        _check_target(model, t)
    repeated = sorted(str(t) for t, c in Counter(targets).items() if c > 1)
    if repeated:
        raise VitalError(f"target {repeated[0]} appears more than once in the batch; each target is visualised once "
                         "(its files would overwrite each other)")
    run_kwargs, method_opts = split_options(method, options)
    opts = RunOptions(steps=steps, setting=setting, seed=seed, progress=progress, **run_kwargs)
    base_targets, base_refs = list(targets), list(refs)
    copy_index = [j for _ in targets for j in range(opts.copies)]
    targets = [t for t in targets for _ in range(opts.copies)]  # a target's copies are neighbours in the batch
    refs = [r for r in refs for _ in range(opts.copies)]
    t0 = time.perf_counter()
    recipe = build_recipe(method, model, targets, refs, opts, method_opts)
    if opts.diversity:
        from vital.objectives.diversity import Diversity

        layer = opts.diversity_layer or getattr(targets[0], "layer", None) or (model.preset.layers or [None])[-1]
        if layer is None:
            raise VitalError("no layer for the diversity term: pass diversity_layer")
        recipe.objective = recipe.objective + opts.diversity * Diversity(model, layer, opts.copies)
    labels = [_label(model, t) + (f" (copy {j + 1})" if opts.copies > 1 else "")
              for t, j in zip(targets, copy_index, strict=True)]
    with recipe:  # hooks exist only inside; the model is left as it was found, after an error too
        prep = time.perf_counter() - t0
        trace = optimize(recipe.param, recipe.objective, recipe.settings, augment=recipe.augment,
                         description=f"{method} {', '.join(map(str, targets))}"[:60])
    images = model.denormalize(trace.image).clamp(0, 1).cpu()
    record = {
        "method": method,
        "model": {"name": model.name, "weights": model.weights_id, "mean": model.mean, "std": model.std,
                  "size": model.size, "resize": model.resize, "interpolation": model.interpolation},
        "targets": [{"kind": type(t).__name__.lower(), **asdict(t), "label": _label(model, t)} for t in base_targets],
        "options": {**{k: v for k, v in asdict(opts).items() if k != "progress"}, **asdict(method_opts)},
        "loop": recipe.settings.as_dict(),
        "objective": recipe.objective.state(),
        "parameterization": recipe.param.state(),
        "recipe": recipe.record,
        "references": [None if r is None else {"source": r.source, "requested": r.requested, "files": r.describe(),
                                               "skipped": dict(r.skipped), "origin": r.origin} for r in base_refs],
        "seed": seed,
        "device": str(model.device),
        "versions": versions(),
        "timings": {"total_s": round(prep + trace.seconds, 3), "setup_s": round(prep, 3),
                    "optimise_s": round(trace.seconds, 3), "step_ms": round(1000 * trace.step_seconds, 3)},
        "final_loss": trace.history[-1].tolist(),
        "loss_curve": loss_curve(trace.history),
    }
    return Result(images, trace.grad_accumulator.cpu(), trace.history, targets, labels, refs, record,
                  copies=copy_index if opts.copies > 1 else [])


def _check_target(model: VisionModel, t: Target) -> None:
    if isinstance(t, Class):
        n = model.num_classes
        if n is not None and not 0 <= t.index < n:
            raise VitalError(f"class {t.index} is out of range: {model.name} has {n} classes (0-{n - 1})")
    elif isinstance(t, Channel):
        if t.channel < 0:
            raise VitalError(f"channel must be non-negative, got {t.channel}")
    elif not isinstance(t, Direction):
        raise VitalError(f"unsupported target {t!r}: use vital.Class(k), vital.Channel(layer, c) or "
                         "vital.Direction(layer, vector)")


def _label(model: VisionModel, t: Target) -> str:
    if isinstance(t, Class):
        return f"{t.index}: {model.class_name(t.index)}"
    return str(t)
