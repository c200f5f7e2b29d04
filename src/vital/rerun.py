"""Repeat a run from its `record.json`: the same model and weights, targets, method, options, seed and references.

References are rebuilt from what the record says they were: files on disk, views of an offline photo, or a mined
store's top images/patches; their SHA-256 hashes are checked against the record, and a difference is reported.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

from vital.errors import VitalError
from vital.models.zoo import LITE, load_model
from vital.references.images import ReferenceSet
from vital.targets import Channel, Class, Direction, Target
from vital.visualize import Result, visualize

PHOTO_VIEW = re.compile(r"^skimage:(?P<name>[^#]+)#view\d+\(seed=(?P<seed>\d+)\)$")


def _weights(model: dict) -> str | None:
    w = model["weights"]
    if w == "random":
        return None
    if w == "custom":
        raise VitalError("this run used a custom nn.Module; rebuild it and call vital.visualize with the record's "
                         "options")
    if w.startswith("torchvision:"):
        return w.rsplit(".", 1)[-1]  # "torchvision:ResNet50_Weights.IMAGENET1K_V1" -> "IMAGENET1K_V1"
    if w.startswith("timm:") or model["name"] in LITE:
        return "default"
    if not Path(w).is_file():
        raise VitalError(f"the run used the weights file {w}, which is not here; pass its path with --weights")
    return w


def _target(t: dict) -> Target:
    if t["kind"] == "class":
        return Class(int(t["index"]))
    if t["kind"] == "channel":
        return Channel(t["layer"], int(t["channel"]))
    if t["kind"] == "direction":
        return Direction(t["layer"], tuple(t["vector"]))
    raise VitalError(f"unknown target kind {t['kind']!r} in the record")


def _references(entry: dict | None) -> ReferenceSet | None:
    if entry is None:
        return None
    files = [f["file"] for f in entry["files"]]
    photo = PHOTO_VIEW.match(files[0]) if files else None
    if photo:
        from vital.references.photos import OFFLINE_PHOTOS, photo_references

        cls = next((k for k, v in OFFLINE_PHOTOS.items() if v == photo["name"]), None)
        if cls is None:
            raise VitalError(f"the record's references are views of {photo['name']}, which is not an offline photo")
        return photo_references(cls, n=len(files), seed=int(photo["seed"]))
    parts = entry["source"].rsplit(":", 3)
    if len(parts) == 4 and (Path(parts[0]) / "index.json").is_file():
        from vital.references.mining import MiningStore

        store_path, layer, channel, kind = parts
        return MiningStore.load(store_path).references(layer, int(channel), kind=kind, n=len(files))
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise VitalError(f"{len(missing)} reference file(s) of the run are missing, e.g. {missing[0]}; restore them")
    return ReferenceSet(files=[Path(f) for f in files], source=entry["source"], requested=entry.get("requested"))


def _check_hashes(entry: dict | None, refs: ReferenceSet | None) -> None:
    if entry is None or refs is None:
        return
    then = [f["sha256"] for f in entry["files"]]
    now = [f["sha256"] for f in refs.describe()]
    changed = sum(a != b for a, b in zip(then, now, strict=False)) + abs(len(then) - len(now))
    if changed:
        warnings.warn(f"{changed} of {len(then)} reference images differ from the recorded run "
                      f"({entry['source']}): the result will differ too", stacklevel=3)


def rerun(record: str | os.PathLike | dict, device: str | None = None, progress: bool = True,
          weights: str | None = None) -> Result:
    """Run again what `record` (a path to record.json or its dict) describes; `weights` overrides the file."""
    if not isinstance(record, dict):
        path = Path(record)
        if path.is_dir():
            path = path / "record.json"
        if not path.is_file():
            raise VitalError(f"no run record at {path}")
        record = json.loads(path.read_text())
    model = load_model(record["model"]["name"], weights or _weights(record["model"]), device or "cpu")
    targets = [_target(t) for t in record["targets"]]
    refs = [_references(e) for e in record["references"]]
    for e, r in zip(record["references"], refs, strict=True):
        _check_hashes(e, r)
    options = dict(record["options"])
    steps, setting, seed = options.pop("steps"), options.pop("setting"), options.pop("seed")
    return visualize(model, targets, refs, method=record["method"], steps=steps, setting=setting, seed=seed,
                     progress=progress, **options)
