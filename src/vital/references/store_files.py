"""The mining store on disk, in one place: `index.json` (the header: model, layers, image set, preprocessing, k,
and progress), `topk.pt` (the running lists while mining, the final tensors once complete) and `files.json` (the
image names). Reading checks every field of the index and that the data belong to it (a wrong type, a missing key
or an impossible value is one line naming the file and the field); writing the index and the final tensors, and
preparing a folder for a new or resumed pass, are here too. `MiningStore` (store.py) is the store in use.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from vital.errors import VitalError
from vital.outputs.confine import relative_name
from vital.outputs.fields import Fields
from vital.outputs.io import write_json

FORMAT = "vital-mining-store/1"
INDEX, STATE, FILES = "index.json", "topk.pt", "files.json"
HEADER_KEYS = ("model", "weights_id", "layers", "dataset", "preprocessing", "k", "n_images")

Lists = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # per channel, best first: scores, image indices, boxes


def read_json(path: Path, what: str) -> Any:
    """JSON from disk as a one-line error when it is unreadable or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VitalError(f"cannot read {what} {path} ({type(e).__name__}); it is damaged: mine again into a new "
                         "folder") from e


INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # PIL's and torchvision's names
_FIX = "mine again into a new folder"


def read_index(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The index of the store at `path`, checked (`check_index`), and its {layer: channels}."""
    index = read_json(path / INDEX, "the store's index")
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise VitalError(f"{path / INDEX} is not a {FORMAT} index; mine again into a new folder")
    return index, check_index(path / INDEX, index)


def read_files(path: Path, index: dict[str, Any], channels: dict[str, int], tensors: Any) -> list[str]:
    """The image names of a store, checked against its index and data; a folder store's names stay under its
    image root (relative, never climbing out), so that no file outside it is ever read."""
    files = read_json(path / FILES, "the store's file list")
    check_consistent(path, channels, index.get("k"), tensors, files)
    if index["dataset"]["kind"] == "folder":
        for name in files:
            relative_name(name, path / FILES, "image")
    return files


def check_index(where: Path, index: dict) -> dict[str, int]:
    """Every field of a store's index that reading it relies on; returns {layer: channels}. A wrong type, a
    missing key or an impossible value is one line naming the file and the field."""
    c = Fields(str(where), f"the store is damaged: {_FIX}")
    for key in ("model", "weights_id"):
        c.key(index, key, "text")
    c.key(index, "complete", "bool")
    k = c.key(index, "k", "whole number")
    c.key(index, "n_images", "whole number", optional=True)
    channels = {}
    for layer, info in c.key(index, "layers", "object").items():
        n = c.key(c.value(info, "object", f"layers.{layer}"), "channels", "whole number", f"layers.{layer}")
        if n < 1:
            c.fail(f"layers.{layer}.channels", f"is {n}, not a positive number")
        channels[layer] = n
    dataset = c.key(index, "dataset", "object")
    if c.key(dataset, "kind", "text", "dataset") == "folder":
        c.key(dataset, "root", "text", "dataset")
    prep = c.key(index, "preprocessing", "object")
    for key in ("mean", "std"):
        if len(c.numbers(c.key(prep, key, "list", "preprocessing"), f"preprocessing.{key}")) != 3:
            c.fail(f"preprocessing.{key}", "does not hold 3 numbers (one per colour channel)")
    for key in ("size", "resize"):
        n = c.key(prep, key, "whole number", "preprocessing")
        if n < 1:
            c.fail(f"preprocessing.{key}", f"is {n}, not a positive number of pixels")
    mode = c.key(prep, "interpolation", "text", "preprocessing")
    if mode not in INTERPOLATIONS:
        c.fail("preprocessing.interpolation", f"is {mode!r}, not one of {', '.join(INTERPOLATIONS)}")
    if k < 1:
        c.fail("k", f"is {k}, not a positive number")
    return channels


_TENSORS = ("image_scores", "image_index", "patch_scores", "patch_index", "patch_boxes")


def check_consistent(path: Path, channels: dict[str, int], k: Any, tensors: Any, files: Any) -> None:
    """The data file belongs to this index: the same layers and channel counts, indices into the file list."""
    bad = f"{path / STATE} does not match {path / INDEX}"
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise VitalError(f"{path / FILES} is not a list of file names; mine again into a new folder")
    if not isinstance(tensors, dict) or set(tensors) != set(channels):
        raise VitalError(f"{bad} (other layers: taken from another store?); mine again into a new folder")
    for layer, c in channels.items():
        t = tensors[layer]
        if not isinstance(t, dict) or any(not torch.is_tensor(t.get(name)) for name in _TENSORS):
            raise VitalError(f"{bad} (layer '{layer}' lacks its tensors); mine again into a new folder")
        if any(t[name].shape[0] != c for name in _TENSORS) or (isinstance(k, int) and t["patch_index"].shape[1] > k):
            raise VitalError(f"{bad} (layer '{layer}' has other shapes: taken from another store?); mine again")
        for name in ("image_index", "patch_index"):
            if t[name].numel() and (int(t[name].min()) < 0 or int(t[name].max()) >= len(files)):
                raise VitalError(f"{bad} (image indices beyond its {len(files)} files); mine again into a new folder")


def final_tensors(lists: Lists, k: int, n: int) -> dict[str, torch.Tensor]:
    scores, index, boxes = (t.cpu() for t in lists)
    return {"image_scores": scores[:, :n].clone(), "image_index": index[:, :n].clone(),
            "patch_scores": scores[:, :k].clone(), "patch_index": index[:, :k].clone(),
            "patch_boxes": boxes[:, :k].clone()}


def store_index(header: dict, seen: int, skipped: list[str], complete: bool, created: str) -> dict[str, Any]:
    return {**header, "images_processed": seen, "skipped": skipped, "skipped_count": len(skipped),
            "complete": complete, "files": FILES, "created": created,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}


def mismatch(path: Path, old: dict, new: dict) -> str | None:
    """The first way in which an existing store's header differs from the requested one, as an error message."""
    where = f"store at {path} was mined"
    fix = "; use another --out or delete it"
    if (old["model"], old["weights_id"]) != (new["model"], new["weights_id"]):
        return (f"{where} for {old['model']} (weights {old['weights_id']}), not {new['model']} "
                f"(weights {new['weights_id']}){fix}")
    if list(old["layers"]) != list(new["layers"]):
        return f"{where} for layers {list(old['layers'])}, not {list(new['layers'])}{fix}"
    if old["layers"] != new["layers"]:
        changed = [n for n in new["layers"] if old["layers"][n] != new["layers"][n]]
        return (f"{where} with other shapes or patch boxes for {changed} (another input size, patch rule or vital "
                f"version){fix}")
    if _without_root(old["dataset"]) != _without_root(new["dataset"]):  # a moved folder is the same image set
        return f"{where} on another image set ({old['dataset']}), not ({new['dataset']}){fix}"
    if old["preprocessing"] != new["preprocessing"]:
        return f"{where} with preprocessing {old['preprocessing']}, not {new['preprocessing']}{fix}"
    if (old["k"], old["n_images"]) != (new["k"], new["n_images"]):
        return f"{where} with k={old['k']}, n_images={old['n_images']}, not k={new['k']}, n_images={new['n_images']}{fix}"
    return None


def _without_root(fingerprint: dict) -> dict:
    return {key: value for key, value in fingerprint.items() if key != "root"}


def open_store(path: Path, header: dict, resume: bool) -> dict[str, Any] | None:
    """Prepare `path` for a store with `header`: the saved state to resume from (None: start afresh). A store
    for anything else is an error; so is a non-empty folder that is not a store."""
    if path.exists() and not path.is_dir():
        raise VitalError(f"--out {path} is a file; give a folder for the mining store")
    path.mkdir(parents=True, exist_ok=True)
    if not (path / INDEX).is_file():
        if any(path.iterdir()):
            raise VitalError(f"--out {path} is a non-empty folder that is not a mining store; use an empty or new "
                             "folder")
        write_json(store_index(header, 0, [], False, time.strftime("%Y-%m-%dT%H:%M:%S")), path / INDEX)
        return None
    old = read_json(path / INDEX, "the store's index")
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        raise VitalError(f"{path / INDEX} is not a {FORMAT} index; use another --out")
    check_index(path / INDEX, old)
    problem = mismatch(path, {key: old.get(key) for key in HEADER_KEYS}, header)
    if problem:
        raise VitalError(problem)
    if not resume or not (path / STATE).is_file():
        (path / STATE).unlink(missing_ok=True)
        (path / FILES).unlink(missing_ok=True)
        write_json(store_index(header, 0, [], False, time.strftime("%Y-%m-%dT%H:%M:%S")), path / INDEX)
        return None
    try:
        saved = torch.load(path / STATE, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or not {"lists", "seen", "skipped", "created", "complete"} <= set(saved):
            raise ValueError("not a mining checkpoint")
    except Exception as e:
        raise VitalError(f"{path / STATE} is damaged ({type(e).__name__}); delete the store folder and mine "
                         "again") from e
    return saved


def load_shard(path: Path) -> tuple[dict, dict, list[str]]:
    """(index, state, file names) of a complete shard store, to merge."""
    index, channels = read_index(path)
    if not index["complete"]:
        raise VitalError(f"shard {path} is not a complete mining store; mine it to the end before merging")
    state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    return index, state, read_files(path, index, channels, state["final"])
