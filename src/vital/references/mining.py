"""One pass over an image collection that keeps, for every channel of some layers, its top images and patches.

Per channel an image scores its spatial maximum. The store keeps the top-N images and the top-k patches, one patch
per image (the arg-max position is that image's best patch, so the k patches come from k distinct images), located
through the layer's measured receptive field. The running lists are merged batch by batch with a stable sort, ties
going to the earlier image, so memory is channels x max(N, k) and the result does not depend on where a pass was
interrupted. The store on disk (`out`) is checkpointed atomically and resumed by calling `mine` again with the same
arguments; a store made for another model, layer set, image collection or preprocessing is refused, never mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vital.errors import VitalError
from vital.features import FeatureExtractor
from vital.io import atomic_write, write_json
from vital.models.zoo import VisionModel
from vital.references.images import ReferenceSet, list_images, load_rgb
from vital.references.receptive_field import ReceptiveField, receptive_field

FORMAT = "vital-mining-store/1"
INDEX, STATE, FILES = "index.json", "topk.pt", "files.json"
_UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def _crop_resize(resize: int, size: int, interpolation: str):
    """The model's preprocessing up to, not including, tensor conversion and normalisation (PIL -> PIL)."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(resize, interpolation=T.InterpolationMode(interpolation), antialias=True),
                      T.CenterCrop(size)])


def _preprocessing(model: VisionModel, size: int) -> dict[str, Any]:
    return {"mean": list(model.mean), "std": list(model.std), "size": size,
            "resize": round(model.resize * size / model.size), "interpolation": model.interpolation}


class _Folder(Dataset):
    """Files under a root, preprocessed by the model's transform; an unreadable file yields ok=False."""

    def __init__(self, root: Path, files: list[str], transform, size: int):
        self.root, self.files, self.transform, self.size = root, files, transform, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return self.transform(load_rgb(self.root / self.files[i])), i, True, self.files[i]
        except _UNREADABLE:
            return torch.zeros(3, self.size, self.size), i, False, self.files[i]


class _Wrapped(Dataset):
    """A user Dataset of model-space tensors, optionally with a path or id as the second element."""

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        item = self.data[i]
        x, ident = (item[0], item[1] if len(item) > 1 else None) if isinstance(item, (tuple, list)) else (item, None)
        if not torch.is_tensor(x) or x.dim() != 3:
            raise VitalError(f"dataset item {i} is {type(x).__name__}, not a (3, H, W) tensor in the model's input "
                             "space; pass an image folder or wrap the data in a Dataset that returns one")
        return x, i, True, str(ident) if isinstance(ident, (str, os.PathLike)) else ""


def _source(images, model: VisionModel) -> tuple[Dataset, dict[str, Any], int]:
    """(dataset yielding (x, index, ok, name), fingerprint, input size)."""
    if isinstance(images, Dataset):
        n = len(images)
        if n == 0:
            raise VitalError("the dataset to mine is empty")
        first = _Wrapped(images)[0][0]
        if first.shape[-1] != first.shape[-2]:
            raise VitalError(f"dataset images are {tuple(first.shape[-2:])}; mining needs square inputs as the "
                             "model's preprocessing makes them (Resize + CenterCrop)")
        return _Wrapped(images), {"kind": "dataset", "class": type(images).__name__, "count": n}, first.shape[-1]
    root = Path(images).expanduser().resolve()
    files = [p.relative_to(root).as_posix() for p in list_images(root)]
    if not files:
        raise VitalError(f"image folder {root} holds no images; point --images at a folder of JPEG/PNG files")
    digest = hashlib.sha256("\n".join(files).encode()).hexdigest()
    fingerprint = {"kind": "folder", "root": str(root), "count": len(files), "sha256": digest}
    return _Folder(root, files, model.transform(), model.size), fingerprint, model.size


def _mismatch(path: Path, old: dict, new: dict) -> str | None:
    """The first way in which an existing store's header differs from the requested one, as an error message."""
    where = f"store at {path} was mined"
    fix = "; use another --out or delete it"
    if (old["model"], old["weights_id"]) != (new["model"], new["weights_id"]):
        return (f"{where} for {old['model']} (weights {old['weights_id']}), not {new['model']} "
                f"(weights {new['weights_id']}){fix}")
    if old["layers"] != new["layers"]:
        return f"{where} for layers {list(old['layers'])}, not {list(new['layers'])}{fix}"
    if _without_root(old["dataset"]) != _without_root(new["dataset"]):  # a moved folder is the same image set
        return f"{where} on another image set ({old['dataset']}), not ({new['dataset']}){fix}"
    if old["preprocessing"] != new["preprocessing"]:
        return f"{where} with preprocessing {old['preprocessing']}, not {new['preprocessing']}{fix}"
    if (old["k"], old["n_images"]) != (new["k"], new["n_images"]):
        return f"{where} with k={old['k']}, n_images={old['n_images']}, not k={new['k']}, n_images={new['n_images']}{fix}"
    return None


def _without_root(fingerprint: dict) -> dict:
    return {key: value for key, value in fingerprint.items() if key != "root"}


HEADER_KEYS = ("model", "weights_id", "layers", "dataset", "preprocessing", "k", "n_images")


Lists = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # per channel, best first: scores, image indices, boxes


def _empty(channels: int, device: torch.device) -> Lists:
    return (torch.empty(channels, 0, device=device), torch.empty(channels, 0, dtype=torch.long, device=device),
            torch.empty(channels, 0, 4, dtype=torch.long, device=device))


def _merge(lists: Lists, act: torch.Tensor, index: torch.Tensor, rf: ReceptiveField, image: int, m: int) -> Lists:
    """The top-m lists after adding a batch (B, C, H, W) of images with global indices `index` (ascending, all
    later than any already in the lists)."""
    b, c, _, w = act.shape
    flat = act.flatten(2)
    pos = flat.argmax(-1)  # the first maximum: deterministic
    vals = flat.gather(-1, pos.unsqueeze(-1)).squeeze(-1).float()
    boxes = rf.boxes(pos // w, pos % w, image).to(act.device)  # (B, C, 4)
    scores = torch.cat([lists[0], vals.T], 1)
    idx = torch.cat([lists[1], index.to(act.device).unsqueeze(0).expand(c, b)], 1)
    bx = torch.cat([lists[2], boxes.transpose(0, 1)], 1)
    # stable: among equal scores the earlier entry, i.e. the earlier image, stays first
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :m]
    return scores.gather(1, order), idx.gather(1, order), bx.gather(1, order.unsqueeze(-1).expand(-1, -1, 4))


class MiningStore:
    """Top images and patches per channel of the mined layers. Built by `mine`; `MiningStore.load` reopens it.

    Tensors per layer: image_scores / image_index (C, N), patch_scores / patch_index (C, k), patch_boxes (C, k, 4)
    as (left, top, right, bottom) in the preprocessed size x size image. Indices point into `files`."""

    def __init__(self, index: dict[str, Any], tensors: dict[str, dict[str, torch.Tensor]], files: list[str],
                 path: Path | None = None, images: str | os.PathLike | Dataset | None = None):
        self.index, self.tensors, self.files, self.path = index, tensors, files, path
        self.dataset = images if isinstance(images, Dataset) else None
        ds = index["dataset"]
        self.root = Path(images) if isinstance(images, (str, os.PathLike)) else (
            Path(ds["root"]) if ds["kind"] == "folder" else None)

    @classmethod
    def load(cls, path: str | os.PathLike, images: str | os.PathLike | Dataset | None = None) -> MiningStore:
        """Open a complete store. `images`: the image folder if it moved, or the Dataset it was mined from (needed
        for pixels of a Dataset-mined store)."""
        path = Path(path)
        if not (path / INDEX).is_file():
            raise VitalError(f"{path} is not a mining store (no {INDEX}); create one with `vital mine`")
        index = json.loads((path / INDEX).read_text())
        if index.get("format") != FORMAT:
            raise VitalError(f"{path / INDEX} is not a {FORMAT} index; mine again into a new folder")
        if not index["complete"]:
            raise VitalError(f"store at {path} is incomplete ({index['images_processed']} of "
                             f"{index['dataset']['count']} images); run `vital mine` again with the same arguments "
                             "to finish it")
        tensors = torch.load(path / STATE, map_location="cpu", weights_only=True)["final"]
        files = json.loads((path / FILES).read_text())
        return cls(index, tensors, files, path, images)

    @property
    def layers(self) -> list[str]:
        return list(self.index["layers"])

    def check(self, model: VisionModel, layer: str, channel: int | None = None) -> None:
        """Raise a VitalError unless this store was mined for `model` (name and weights), has `layer` and,
        if given, `channel` is one of its channels."""
        where = f"store at {self.path}" if self.path else "mining store"
        if (model.name, model.weights_id) != (self.index["model"], self.index["weights_id"]):
            raise VitalError(f"{where} was mined for {self.index['model']} (weights {self.index['weights_id']}), not "
                             f"{model.name} (weights {model.weights_id}); mine references for this model")
        if layer not in self.index["layers"]:
            raise VitalError(f"{where} has no layer '{layer}' (mined: {', '.join(self.layers)}); mine it with "
                             f"`vital mine --layers {layer}`")
        channels = self.index["layers"][layer]["channels"]
        if channel is not None and not 0 <= channel < channels:
            raise VitalError(f"channel {channel} is out of range: layer '{layer}' has {channels} channels "
                             f"(0-{channels - 1})")

    def _layer(self, layer: str, channel: int | None = None) -> dict[str, torch.Tensor]:
        if layer not in self.tensors:
            raise VitalError(f"store has no layer '{layer}' (mined: {', '.join(self.layers)}); mine it first")
        channels = self.index["layers"][layer]["channels"]
        if channel is not None and not 0 <= channel < channels:
            raise VitalError(f"channel {channel} is out of range: layer '{layer}' has {channels} channels "
                             f"(0-{channels - 1})")
        return self.tensors[layer]

    def _name(self, i: int) -> str:
        return self.files[i] or f"#{i}"

    def top_images(self, layer: str, channel: int) -> list[tuple[str, float]]:
        """(file or id, spatial-max activation), best first."""
        t = self._layer(layer, channel)
        return [(self._name(i), s) for i, s in zip(t["image_index"][channel].tolist(),
                                                   t["image_scores"][channel].tolist(), strict=True)]

    def top_patches(self, layer: str, channel: int) -> list[tuple[str, float, tuple[int, int, int, int]]]:
        """(file or id, activation at the patch centre, box (left, top, right, bottom)), best first."""
        t = self._layer(layer, channel)
        return [(self._name(i), s, tuple(b)) for i, s, b in zip(
            t["patch_index"][channel].tolist(), t["patch_scores"][channel].tolist(),
            t["patch_boxes"][channel].tolist(), strict=True)]

    def _pixels(self, i: int) -> Image.Image:
        """Image i as the model sees it (resized and centre-cropped), un-normalised, as PIL."""
        prep = self.index["preprocessing"]
        if self.index["dataset"]["kind"] == "folder":
            if self.root is None or not (self.root / self.files[i]).is_file():
                raise VitalError(f"image {self.files[i]} is not under {self.root}; pass the folder's new place as "
                                 "MiningStore.load(path, images=FOLDER)")
            return _crop_resize(prep["resize"], prep["size"], prep["interpolation"])(load_rgb(self.root / self.files[i]))
        if self.dataset is None:
            raise VitalError("this store was mined from a Dataset: pass it as MiningStore.load(path, images=DATASET) "
                             "to see its pixels")
        x = _Wrapped(self.dataset)[i][0].float()
        mean = torch.tensor(prep["mean"]).view(3, 1, 1)
        std = torch.tensor(prep["std"]).view(3, 1, 1)
        x01 = (x.cpu() * std + mean).clamp(0, 1)
        return Image.fromarray((x01 * 255).round().byte().permute(1, 2, 0).numpy())

    def references(self, layer: str, channel: int, kind: str = "images", n: int | None = None) -> ReferenceSet:
        """The channel's references, best first: whole images (files when they exist on disk) or patches cropped
        from the preprocessed image and resized to the model's input size."""
        source = f"{self.path or 'mining store'}:{layer}:{channel}:{kind}"
        if kind == "images":
            names = [name for name, _ in self.top_images(layer, channel)][:n]
            if self.root is not None:
                return ReferenceSet(files=[self.root / f for f in names], source=source, requested=n)
            if names and all(Path(f).is_file() for f in names):
                return ReferenceSet(files=[Path(f) for f in names], source=source, requested=n)
            t = self._layer(layer, channel)
            return ReferenceSet(images=[(self._name(i), self._pixels(i)) for i in t["image_index"][channel][:n].tolist()],
                                source=source, requested=n)
        if kind == "patches":
            return ReferenceSet(images=self._patches(layer, channel, n), source=source, requested=n)
        raise VitalError(f"unknown reference kind '{kind}'; use 'images' or 'patches'")

    def _patches(self, layer: str, channel: int, n: int | None) -> list[tuple[str, Image.Image]]:
        prep = self.index["preprocessing"]
        size = prep["size"]
        resample = Image.Resampling[prep["interpolation"].upper()]
        t = self._layer(layer, channel)
        out = []
        for i, box in zip(t["patch_index"][channel][:n].tolist(), t["patch_boxes"][channel][:n].tolist(), strict=True):
            crop = self._pixels(i).crop(tuple(box)).resize((size, size), resample)
            out.append((f"{self._name(i)}@{','.join(map(str, box))}", crop))
        return out

    def grid(self, layer: str, channels: Sequence[int] | None = None, path: str | os.PathLike | None = None,
             n: int = 8, tile: int = 64) -> Path:
        """A PNG with one row per channel (default: the first 16) of its top `n` patches, `tile` px each; written
        to `path` (default: grid_<layer>.png in the store). Rows with fewer patches are padded with grey."""
        self._layer(layer)
        channels = list(range(min(16, self.index["layers"][layer]["channels"])) if channels is None else channels)
        if path is None:
            if self.path is None:
                raise VitalError("this store is not on disk: pass a path for the grid")
            path = self.path / f"grid_{layer}.png"
        sheet = Image.new("RGB", (n * tile, len(channels) * tile), (128, 128, 128))
        for row, c in enumerate(channels):
            for col, (_, im) in enumerate(self._patches(layer, c, n)):
                sheet.paste(im.resize((tile, tile), Image.Resampling.BILINEAR), (col * tile, row * tile))
        path = Path(path)
        atomic_write(path, lambda f: sheet.save(f, format="PNG"))
        return path


def final_tensors(lists: Lists, k: int, n: int) -> dict[str, torch.Tensor]:
    scores, index, boxes = (t.cpu() for t in lists)
    return {"image_scores": scores[:, :n].clone(), "image_index": index[:, :n].clone(),
            "patch_scores": scores[:, :k].clone(), "patch_index": index[:, :k].clone(),
            "patch_boxes": boxes[:, :k].clone()}


def mine(
    model: VisionModel,
    layers: Sequence[str],
    images: str | os.PathLike | Dataset,
    k: int = 50,
    n_images: int | None = None,
    out: str | os.PathLike | None = None,
    batch_size: int = 32,
    workers: int = 0,
    resume: bool = True,
    progress: bool = True,
    grid: bool = False,
    checkpoint_every: int = 100,
) -> MiningStore:
    """Mine the top `n_images` (default k) images and top `k` patches (distinct images) of every channel of
    `layers` in one pass over `images`: a folder (searched recursively, preprocessed by the model's transform) or
    a Dataset of model-space tensors (optionally with a path or id as the second element).

    With `out`, the store is written there, checkpointed every `checkpoint_every` batches and on interruption;
    calling again with the same arguments resumes (`resume=False` starts over) or, once complete, just loads it.
    `grid=True` also writes grid_<layer>.png per layer."""
    if k < 1 or (n_images is not None and n_images < 1):
        raise VitalError(f"k and n_images must be at least 1, got k={k}, n_images={n_images}")
    if batch_size < 1 or checkpoint_every < 1 or workers < 0:
        raise VitalError("batch_size and checkpoint_every must be at least 1 and workers at least 0")
    if not layers:
        raise VitalError("no layers to mine; name at least one (`vital layers MODEL` lists them)")
    if grid and out is None:
        raise VitalError("grid=True needs an out folder to write the grids to")
    n_images = n_images or k
    layers = list(dict.fromkeys(layers))
    extractor = FeatureExtractor(model.module, layers, raw=True)
    data, fingerprint, size = _source(images, model)
    device, dtype = model.device, model.dtype
    with torch.no_grad():
        shapes = {name: tuple(a.shape[1:]) for name, a in
                  extractor(torch.zeros(1, 3, size, size, device=device, dtype=dtype)).items()}
    rfs = {name: receptive_field(model.module, name, size) for name in layers}
    header = {
        "format": FORMAT, "model": model.name, "weights_id": model.weights_id,
        "layers": {name: {"channels": shapes[name][0], "shape": list(shapes[name]),
                          "receptive_field": rfs[name].as_dict()} for name in layers},
        "k": k, "n_images": n_images, "dataset": fingerprint, "preprocessing": _preprocessing(model, size),
    }
    path = Path(out) if out is not None else None
    saved: dict[str, Any] | None = None
    if path is not None:
        saved = _open_store(path, header, resume)
        if saved is not None and saved["complete"]:
            store = MiningStore.load(path, images)
            if grid:
                for name in layers:
                    store.grid(name)
            return store

    m = max(k, n_images)
    # (lists per layer, images seen, unreadable files): replaced as a whole after each batch, so an interruption
    # leaves it at a batch boundary and a checkpoint never holds half a batch
    state: tuple[dict[str, Lists], int, list[str]] = ({name: _empty(shapes[name][0], device) for name in layers}, 0, [])
    names = list(data.files) if isinstance(data, _Folder) else [""] * len(data)
    created = time.strftime("%Y-%m-%dT%H:%M:%S")
    if saved is not None:
        state = ({name: tuple(t.to(device) for t in saved["lists"][name]) for name in layers}, saved["seen"],
                 saved["skipped"])
        created = saved["created"]
        if not isinstance(data, _Folder):
            names = saved["names"]

    def checkpoint(complete: bool) -> None:
        if path is None:
            return
        lists, seen, skipped = state
        saving = {"seen": seen, "skipped": skipped, "created": created, "complete": complete,
                  "lists": {name: tuple(t.cpu() for t in ls) for name, ls in lists.items()},
                  "names": [] if isinstance(data, _Folder) else names}
        if complete:
            saving["final"] = {name: final_tensors(ls, k, n_images) for name, ls in lists.items()}
            write_json(names, path / FILES)
        atomic_write(path / STATE, lambda f: torch.save(saving, f))
        write_json(store_index(header, seen, skipped, complete, created), path / INDEX)

    loader = DataLoader(Subset(data, range(state[1], len(data))), batch_size=batch_size, shuffle=False,
                        num_workers=workers, pin_memory=device.type == "cuda")
    bar = tqdm(total=len(data), initial=state[1], unit="img", desc="mining", disable=not progress,
               dynamic_ncols=True)
    try:
        with torch.no_grad():
            for step, (x, idx, ok, ident) in enumerate(loader, 1):
                lists, seen, skipped = state
                for i, name in zip(idx.tolist(), ident, strict=True):
                    names[i] = name
                if bool(ok.any()):
                    feats = extractor(x[ok].to(device=device, dtype=dtype, non_blocking=True))
                    lists = {name: _merge(lists[name], feats[name], idx[ok], rfs[name], size, m) for name in layers}
                state = (lists, seen + len(ok), skipped + [names[i] for i in idx[~ok].tolist()])
                bar.update(len(ok))
                if step % checkpoint_every == 0:
                    checkpoint(False)
    except BaseException:
        checkpoint(False)  # keep the work done up to the last whole batch
        raise
    finally:
        bar.close()
    lists, seen, skipped = state
    if seen == len(skipped):
        raise VitalError(f"none of the {len(data)} images in {fingerprint.get('root', 'the dataset')} could be read; "
                         "point --images at a folder of JPEG/PNG images")
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image(s): {', '.join(skipped[:5])}"
                      + (" ..." if len(skipped) > 5 else ""), stacklevel=2)
    checkpoint(True)
    final = {name: final_tensors(ls, k, n_images) for name, ls in lists.items()}
    store = MiningStore(store_index(header, seen, skipped, True, created), final, names, path, images)
    if grid:
        for name in layers:
            store.grid(name)
    return store


def store_index(header: dict, seen: int, skipped: list[str], complete: bool, created: str) -> dict[str, Any]:
    return {**header, "images_processed": seen, "skipped": skipped, "skipped_count": len(skipped),
            "complete": complete, "files": FILES, "created": created,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _open_store(path: Path, header: dict, resume: bool) -> dict[str, Any] | None:
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
    old = json.loads((path / INDEX).read_text())
    if old.get("format") != FORMAT:
        raise VitalError(f"{path / INDEX} is not a {FORMAT} index; use another --out")
    problem = _mismatch(path, {key: old.get(key) for key in HEADER_KEYS}, header)
    if problem:
        raise VitalError(problem)
    if not resume or not (path / STATE).is_file():
        (path / STATE).unlink(missing_ok=True)
        (path / FILES).unlink(missing_ok=True)
        write_json(store_index(header, 0, [], False, time.strftime("%Y-%m-%dT%H:%M:%S")), path / INDEX)
        return None
    return torch.load(path / STATE, map_location="cpu", weights_only=True)
