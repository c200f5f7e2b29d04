"""Repeat a run from its `record.json`: the same model and weights, targets, method, options, seed and references.

References are rebuilt from the structured origin the record keeps for each set (`record["references"][i]
["origin"]`, see `vital.references.images`): the recorded files on disk, seeded views of an offline photo, or a
mined store's top images/patches; their SHA-256 hashes are checked against the record, and a difference is
reported. Records written before origins were recorded have their origin read once from the old strings
(`legacy_origin`).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

from vital.errors import VitalError
from vital.models.zoo import LITE, RANDOM_ID, load_model
from vital.references.images import ReferenceSet
from vital.targets import Channel, Class, Direction, Target
from vital.visualize import Result, visualize

PHOTO_VIEW = re.compile(r"^skimage:(?P<name>[^#]+)#view\d+\(seed=(?P<seed>\d+)\)$")


def _weights(model: dict) -> str | None:
    w = model["weights"]
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
    if w.startswith("timm:") or model["name"] in LITE:
        return "default"
    if not Path(w).is_file():
        raise VitalError(f"the run used the weights file {w}, which is not here; pass its path with --weights")
    return w


def _target(t: dict) -> Target:
    if t["kind"] == "class":
        return Class(int(t["index"]))
    if t["kind"] == "channel":
        position = t.get("position")
        return Channel(t["layer"], int(t["channel"]), (int(position[0]), int(position[1])) if position else None)
    if t["kind"] == "direction":
        return Direction(t["layer"], tuple(t["vector"]), str(t.get("name", "")))
    raise VitalError(f"unknown target kind {t['kind']!r} in the record")


def legacy_origin(entry: dict) -> dict:
    """The origin of a reference entry written before records kept one, read from its strings: photo views are
    named "skimage:NAME#viewI(seed=S)", a store's source is "STORE:LAYER:CHANNEL:KIND"; anything else is files."""
    files = [f["file"] for f in entry["files"]]
    photo = PHOTO_VIEW.match(files[0]) if files else None
    if photo:
        from vital.references.photos import OFFLINE_PHOTOS

        cls = next((k for k, v in OFFLINE_PHOTOS.items() if v == photo["name"]), None)
        return {"kind": "photo", "class": cls, "name": photo["name"], "n": len(files), "seed": int(photo["seed"])}
    parts = entry["source"].rsplit(":", 3)
    if len(parts) == 4 and (Path(parts[0]) / "index.json").is_file():
        return {"kind": "mined", "store": parts[0], "layer": parts[1], "channel": int(parts[2]), "ref_kind": parts[3],
                "n": len(files)}
    return {"kind": "files"}


def references_from_record(entry: dict | None) -> ReferenceSet | None:
    """Rebuild one reference set of a run record from its origin."""
    if entry is None:
        return None
    origin = entry.get("origin") or legacy_origin(entry)
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
    files = [Path(f["file"]) for f in entry["files"]]  # folder, class_folder, files: exactly the recorded sample
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise VitalError(f"{len(missing)} reference file(s) of the run are missing, e.g. {missing[0]}; restore them")
    return ReferenceSet(files=files, source=entry["source"], requested=entry.get("requested"), origin=dict(origin))


def _check_hashes(entry: dict | None, refs: ReferenceSet | None) -> None:
    if entry is None or refs is None:
        return
    then = [f["sha256"] for f in entry["files"]]
    now = [f["sha256"] for f in refs.describe()]
    changed = sum(a != b for a, b in zip(then, now, strict=False)) + abs(len(then) - len(now))
    if changed:
        warnings.warn(f"{changed} of {len(then)} reference images differ from the recorded run "
                      f"({entry['source']}): the result will differ too", stacklevel=3)


LEGACY_EXTRA = {"maco_magnitude": "magnitude", "maco_crops": "crops", "bn_weight": "bn_weight"}


def _legacy_options(record: dict, options: dict) -> dict:
    """Options of a record written before methods had typed options: one bag with every method's fields (None or
    the old defaults where unused) and an `extra` dict. Keep what the method used, under today's names."""
    if "extra" not in options:
        return options
    out = {k: v for k, v in options.items() if k != "extra"}
    out.update({LEGACY_EXTRA[k]: v for k, v in options["extra"].items() if k in LEGACY_EXTRA})
    classes = all(t.get("kind") == "class" for t in record.get("targets", []))
    if record["method"] != "vital" or classes:
        out.pop("relevance", None)  # recorded as "lrp" whether or not the method used it
    if record["method"] != "vital":
        for k in ("layers", "layer_weights", "feat_dist"):
            out.pop(k, None)
    elif not classes:  # a channel run before the measured defaults: the authors' form was the only one
        out.update(mask="multiply", target_weight=0.0, unweighted=0.0, param="pixel")
    return out


def run_arguments(record: dict) -> dict:
    """The keyword arguments of `vital.visualize` that the record's run used: the method and every option."""
    options = _legacy_options(record, {k: v for k, v in record["options"].items() if k != "progress"})
    return {"method": record["method"], **options}


def rerun(record: str | os.PathLike | dict, device: str | None = None, progress: bool = True,
          weights: str | None = None) -> Result:
    """Run again what `record` (a path to record.json or its dict) describes; `weights` overrides the file."""
    where = "the record"
    if not isinstance(record, dict):
        path = Path(record)
        if path.is_dir():
            path = path / "record.json"
        if not path.is_file():
            raise VitalError(f"no run record at {path}")
        where = str(path)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise VitalError(f"cannot read the run record {path} ({type(e).__name__}); it is damaged or not a "
                             "record.json written by vital") from e
    _check_record(record, where)
    assert isinstance(record, dict)
    try:  # the record is data from disk: any key of the wrong kind is a damaged record, said in one line
        name, recorded_weights = record["model"]["name"], _weights(record["model"])
        targets = [_target(t) for t in record["targets"]]
        arguments = run_arguments(record)
        entries = record["references"]
        refs = [references_from_record(e) for e in entries]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise VitalError(f"{where} is damaged or from another program ({type(e).__name__}: {e}); it cannot be "
                         "rerun") from e
    model = load_model(name, weights or recorded_weights, device or "cpu")
    for entry, r in zip(entries, refs, strict=True):
        _check_hashes(entry, r)
    return visualize(model, targets, refs, progress=progress, **arguments)


def _check_record(record: object, where: str) -> None:
    """The outline every run record has; the details are checked where they are read."""
    shape = {"method": str, "model": dict, "targets": list, "references": list, "options": dict}
    if not isinstance(record, dict):
        raise VitalError(f"{where} is not a run record (a JSON object); give the record.json written by vital")
    missing = [k for k in shape if k not in record]
    wrong = [k for k, kind in shape.items() if k in record and not isinstance(record[k], kind)]
    if missing or wrong:
        what = f"lacks {', '.join(missing)}" if missing else f"has {', '.join(wrong)} of the wrong type"
        raise VitalError(f"{where} {what}; it is damaged or not a record.json written by vital")
    if len(record["references"]) != len(record["targets"]):
        raise VitalError(f"{where} lists {len(record['targets'])} targets but {len(record['references'])} reference "
                         "sets; it is damaged")
