"""Repeat a run from its run record (`vital.outputs.record`): the same model and weights, targets, method, options, seed and references.

References are rebuilt from the structured origin the record keeps for each set (`origin`, see
`vital.references.images`): the recorded files on disk, seeded views of an offline photo, or a mined store's top
images/patches; their SHA-256 hashes are checked against the record, and a difference is reported. Reading,
checking and upgrading older records is `vital.outputs.record`'s job.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from vital.errors import VitalError
from vital.models.zoo import LITE, RANDOM_ID, load_model
from vital.outputs.io import versions
from vital.outputs.record import ModelEntry, ReferenceEntry, RunRecord
from vital.references.images import ReferenceSet
from vital.run.execute import Result, visualize

__all__ = ["references_from_record", "reproducibility", "rerun", "weights_argument"]


def weights_argument(model: ModelEntry) -> str | None:
    """The `weights` argument of `load_model` that gives back the recorded model (None: a seeded random net)."""
    w = model.weights
    if w == RANDOM_ID:
        return None
    if w == "random":
        warnings.warn("the recorded run used a random network whose weights were not seeded (a record from before "
                      f"vital seeded them): this rerun draws {RANDOM_ID} and cannot give the same image",
                      stacklevel=3)
        return None
    if w == "custom":
        raise VitalError("this run used a custom nn.Module; rebuild it and call vital.visualize with the record's "
                         "options")
    if w.startswith("torchvision:"):
        return w.rsplit(".", 1)[-1]  # "torchvision:ResNet50_Weights.IMAGENET1K_V1" -> "IMAGENET1K_V1"
    if w.startswith("timm:") or model.name in LITE:
        return "default"
    if not Path(w).is_file():
        raise VitalError(f"the run used the weights file {w}, which is not here; pass its path with --weights")
    return w


def references_from_record(entry: ReferenceEntry | dict | None) -> ReferenceSet | None:
    """Rebuild one reference set of a run record from its origin (an entry of `RunRecord.references`, or its
    JSON)."""
    if entry is None:
        return None
    if isinstance(entry, dict):
        entry = ReferenceEntry.from_json(entry)
    origin = entry.origin
    kind = origin.get("kind")
    if kind == "photo":
        from vital.references.photos import OFFLINE_PHOTOS, photo_references

        if origin.get("class") not in OFFLINE_PHOTOS:
            raise VitalError(f"the record's references are views of {origin.get('name')}, which is not an offline "
                             "photo here")
        return photo_references(int(origin["class"]), n=int(origin["n"]), seed=int(origin["seed"]))
    if kind == "mined":
        from vital.references.mining import MiningStore

        if not origin.get("store"):
            raise VitalError("the run's references came from a mining store that was not saved; mine with --out "
                             "(vital mine) and run again")
        return MiningStore.load(origin["store"]).references(origin["layer"], int(origin["channel"]),
                                                            kind=origin["ref_kind"], n=origin.get("n"))
    if kind == "memory":
        raise VitalError("the run's references were images in memory, which a record cannot rebuild; save them as "
                         "files and pass them with vital.references.from_files")
    files = [Path(f.file) for f in entry.files]  # folder, class_folder, files: exactly the recorded sample
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise VitalError(f"{len(missing)} reference file(s) of the run are missing, e.g. {missing[0]}; restore them")
    return ReferenceSet(files=files, source=entry.source, requested=entry.requested, origin=dict(origin))


def _check_hashes(entry: ReferenceEntry | None, refs: ReferenceSet | None) -> None:
    if entry is None or refs is None:
        return
    then = [f.sha256 for f in entry.files]
    now = [f["sha256"] for f in refs.describe()]
    changed = sum(a != b for a, b in zip(then, now, strict=False)) + abs(len(then) - len(now))
    if changed:
        warnings.warn(f"{changed} of {len(then)} reference images differ from the recorded run "
                      f"({entry.source}): the result will differ too", stacklevel=3)


def rerun(record: str | os.PathLike | dict | RunRecord, device: str | None = None, progress: bool = True,
          weights: str | None = None) -> Result:
    """Run again what `record` (the path of a record file or of its run folder, its JSON, or a `RunRecord`) describes;
    `weights` overrides the file."""
    if isinstance(record, RunRecord):
        run = record
    elif isinstance(record, dict):
        run = RunRecord.from_json(record)
    else:
        run = RunRecord.read(record)
    recorded_weights = weights_argument(run.model)
    targets = [t.target for t in run.targets]
    refs = [references_from_record(e) for e in run.references]
    model = load_model(run.model.name, weights or recorded_weights, device or "cpu")
    for entry, r in zip(run.references, refs, strict=True):
        _check_hashes(entry, r)
    again = visualize(model, targets, refs, progress=progress, **run.run_arguments())
    _check_engine(run, again)
    return again


def _check_engine(run: RunRecord, again: Result) -> None:
    """Warn when the rerun's relevance came from another engine than the recorded run's (the rule chain and the
    modified-gradient rules differ for Linear, BatchNorm, ReLU6 and residual joins): its image differs then."""
    then = run.recipe.get("relevance_backend")
    now = again.run.recipe.get("relevance_backend") if again.run is not None else None
    if then is not None and now != then:
        why = again.run.recipe.get("relevance_reason", "") if again.run is not None else ""
        warnings.warn(f"this rerun computed relevance with the {now} engine ({why}); the recorded run used the "
                      f"{then} engine ({run.recipe.get('relevance_reason', '')}): the image will differ",
                      stacklevel=2)


def _differences(then: dict, now: dict) -> list[str]:
    """What differs between two records' `versions`: the builds and the machine's CPU, kernels, threads and GPU."""
    out = [f"{k} {then.get(k)} -> {now.get(k)}" for k in ("vital", "torch", "torchvision") if then.get(k) != now.get(k)]
    was, here = then.get("machine") or {}, now.get("machine") or {}
    out += [f"{k} {was.get(k)} -> {here.get(k)}" for k in ("cpu", "kernels", "threads", "gpu") if was.get(k) != here.get(k)]
    return out


def reproducibility(run: RunRecord, result: Result | None = None, device: str | None = None) -> str:
    """Which of the rerun guarantees (README, Guarantees) holds for `run` repeated here, as one line: on the same
    machine and build the images are pixel-identical; on another CPU, thread count or build they differ by float
    rounding, which Adam carries further the longer the run; with the rerun's `result`, the final losses show how
    far (the same target and references give the same loss, up to that rounding). `device`: the rerun's, as
    `rerun` takes it."""
    now = versions(device or "cpu")
    if not (run.versions or {}).get("machine"):
        line = "the record does not name the machine it ran on (an older record): pixel-identical only where it ran"
    elif diffs := _differences(run.versions, now):
        line = (f"another machine or build ({'; '.join(diffs)}): the images differ by float rounding (a few steps: "
                "within 25 levels on 0.1% of values; long runs further, see bench/RESULTS.md, 'Rerun drift')")
    else:
        line = "the same machine and build as the recorded run: the images are pixel-identical"
    if result is not None and run.final_loss and result.run is not None and result.run.final_loss:
        pairs = ", ".join(f"{a:.4g} -> {b:.4g}" for a, b in zip(run.final_loss, result.run.final_loss, strict=False))
        line += f"; final loss {pairs}"
    return line
