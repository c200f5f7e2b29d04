"""`vital.visualize`: run a method on one or many targets (one batch) and get a `Result` to save or inspect."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vital.errors import VitalError
from vital.methods import RunOptions, build_recipe, split_options
from vital.models.zoo import VisionModel, load_model
from vital.outputs.claim import save_run
from vital.outputs.io import loss_curve, transparency_rgba, versions
from vital.outputs.record import ModelEntry, ReferenceEntry, RunRecord, TargetEntry
from vital.outputs.run_files import write_run_folder
from vital.pages import display
from vital.references.images import ReferenceSet
from vital.run.loop import optimize
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
    run: RunRecord | None = None  # what was run, as its run folder keeps it (`vital.outputs.record`)
    paths: dict[str, list[Path]] = field(default_factory=dict)
    copies: list[int] = field(default_factory=list)  # each image's copy number, when targets have several
    faithfulness: list = field(default_factory=list)  # per image, its PathSimilarity once judged (faithful_runs)

    @property
    def record(self) -> dict:
        """The run record as JSON (what the record file holds, less the outputs until the result is saved)."""
        return {} if self.run is None else self.run.as_json()

    def slug(self, i: int) -> str:
        """The file-name stem of image i: its target's, with the copy number when there are several."""
        return self.targets[i].slug() + (f"_v{self.copies[i]}" if self.copies else "")

    def transparency(self, i: int):
        return transparency_rgba(self.images[i], self.grad_accumulator[i])

    def select(self, i: int, batch: dict) -> Result:
        """Target i of a batch result as a result of its own (its record says which batch it was optimised in)."""
        history = self.history[:, i:i + 1]
        run = None if self.run is None else self.run.select(i, loss_curve(history), batch)
        return Result(self.images[i:i + 1], self.grad_accumulator[i:i + 1], history, [self.targets[i]],
                      [self.labels[i]], [self.references[i]], run)

    def _repr_html_(self) -> str:  # Jupyter: images, transparency maps and references side by side
        return display.result_html(self)

    def save(self, out_dir: str | os.PathLike, sheet: bool = True, overwrite: bool = False) -> dict[str, list[Path]]:
        """Write `<target>.png`, `<target>_transparency.png` (RGBA), the run record and `contact_sheet.png` into
        `out_dir` as one folder (`vital.outputs.claim`: written aside, then renamed into place). A folder holding another
        run is replaced only with `overwrite`."""
        final = Path(out_dir).expanduser().absolute() if str(out_dir).strip() else Path("")
        written = save_run(out_dir, lambda folder: write_run_folder(self, folder, sheet), overwrite)
        self.paths = {k: [final / p.name for p in v] for k, v in written.items()}
        return self.paths


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
    base_targets, base_refs = _checked_batch(model, targets, references)
    run_kwargs, method_opts = split_options(method, options)
    opts = RunOptions(steps=steps, setting=setting, seed=seed, progress=progress, **run_kwargs)
    copy_index = [j for _ in base_targets for j in range(opts.copies)]
    targets = [t for t in base_targets for _ in range(opts.copies)]  # a target's copies are neighbours in the batch
    refs = [r for r in base_refs for _ in range(opts.copies)]
    t0 = time.perf_counter()
    recipe = build_recipe(method, model, targets, refs, opts, method_opts)
    if opts.diversity:
        _add_diversity(recipe, model, targets, opts)
    labels = [_label(model, t) + (f" (copy {j + 1})" if opts.copies > 1 else "")
              for t, j in zip(targets, copy_index, strict=True)]
    with recipe:  # hooks exist only inside; the model is left as it was found, after an error too
        prep = time.perf_counter() - t0
        trace = optimize(recipe.param, recipe.objective, recipe.settings, augment=recipe.augment,
                         description=f"{method} {', '.join(map(str, targets))}"[:60])
    images = model.denormalize(trace.image).clamp(0, 1).cpu()
    options_record = {**{k: v for k, v in asdict(opts).items() if k != "progress"}, **asdict(method_opts)}
    run = RunRecord(
        method=method, model=ModelEntry.of(model), targets=[TargetEntry(t, _label(model, t)) for t in base_targets],
        options=options_record, references=[None if r is None else ReferenceEntry.of(r) for r in base_refs],
        loop=recipe.settings.as_dict(), objective=recipe.objective.state(), parameterization=recipe.param.state(),
        recipe=recipe.resolved, seed=seed, device=str(model.device), versions=versions(model.device),
        timings={"total_s": round(prep + trace.seconds, 3), "setup_s": round(prep, 3),
                 "optimise_s": round(trace.seconds, 3), "step_ms": round(1000 * trace.step_seconds, 3)},
        final_loss=trace.history[-1].tolist(), loss_curve=loss_curve(trace.history))
    return Result(images, trace.grad_accumulator.cpu(), trace.history, targets, labels, refs, run,
                  copies=copy_index if opts.copies > 1 else [])


def _checked_batch(model: VisionModel, targets: Target | Sequence[Target],
                   references: ReferenceSet | Sequence[ReferenceSet | None] | None
                   ) -> tuple[list[Target], list[ReferenceSet | None]]:
    """The targets and one reference set per target, each target checked against the model and seen once."""
    targets = _as_list(targets)
    if not targets:
        raise VitalError("no targets given")
    refs = _as_list(references, len(targets))
    _check_reference_sets(refs)
    if len(refs) != len(targets):
        raise VitalError(f"{len(targets)} targets but {len(refs)} reference sets; give one per target or one for all")
    for t in targets:
        _check_target(model, t)
    repeated = sorted(str(t) for t, c in Counter(targets).items() if c > 1)
    if repeated:
        raise VitalError(f"target {repeated[0]} appears more than once in the batch; each target is visualised once "
                         "(its files would overwrite each other)")
    return targets, refs


def _add_diversity(recipe, model: VisionModel, targets: list[Target], opts: RunOptions) -> None:
    """Add the diversity term between a target's copies (on `diversity_layer`, the target's layer or the last)."""
    from vital.objectives.diversity import Diversity

    layer = opts.diversity_layer or getattr(targets[0], "layer", None) or (model.preset.layers or [None])[-1]
    if layer is None:
        raise VitalError("no layer for the diversity term: pass diversity_layer")
    recipe.objective = recipe.objective + opts.diversity * Diversity(model, layer, opts.copies)


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


def _check_reference_sets(references: Sequence[object]) -> None:
    """Each entry is a `ReferenceSet` or None; a path is refused with the call that reads it."""
    for r in references:
        if r is None or isinstance(r, ReferenceSet):
            continue
        hint = (f"; read a folder with vital.references.from_folder({str(r)!r})" if isinstance(r, (str, os.PathLike))
                else "")
        raise VitalError(f"references must be ReferenceSet objects (or None), got {type(r).__name__} {r!r}"[:300]
                         + hint)
