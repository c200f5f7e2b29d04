"""One pass over an image collection that keeps, for every channel of some layers, its top images and patches.

Per channel an image scores its spatial maximum. The store keeps the top-N images and the top-k patches, one patch
per image (the arg-max position is that image's best patch, so the k patches come from k distinct images), located
through the layer's measured receptive field. The running lists are merged batch by batch with a stable sort, ties
going to the earlier image, so memory is channels x max(N, k) and the result does not depend on where a pass was
interrupted. The store on disk (`out`) is checkpointed atomically and resumed by calling `mine` again with the same
arguments; a store made for another model, layer set, image collection or preprocessing is refused, never mixed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vital.errors import VitalError
from vital.features import FeatureExtractor
from vital.models.zoo import VisionModel
from vital.outputs.io import atomic_write, write_json
from vital.references.decode import DeviceDecoder, RawFolder, collate, collate_pixels
from vital.references.images import UNREADABLE, list_images, load_rgb
from vital.references.receptive_field import ReceptiveField, effective_fields, receptive_fields
from vital.references.sources import HFImages, TarShards, source_for
from vital.references.store import MiningStore, ModelSpaceDataset
from vital.references.store_files import (
    FILES,
    FORMAT,
    INDEX,
    STATE,
    Lists,
    final_tensors,
    open_store,
    store_index,
)

__all__ = ["MiningStore", "mine"]



def _preprocessing(model: VisionModel, size: int, decode: str = "pil") -> dict[str, Any]:
    """How images become model input (recorded only when not the default, so older stores still match)."""
    out = {"mean": list(model.mean), "std": list(model.std), "size": size,
           "resize": round(model.resize * size / model.size), "interpolation": model.interpolation}
    return out if decode == "pil" else {**out, "decode": decode}


class _Folder(Dataset):
    """Files under a root, preprocessed by the model's transform; an unreadable file yields ok=False."""

    def __init__(self, root: Path, files: list[str], transform, size: int):
        self.root, self.files, self.transform, self.size = root, files, transform, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return self.transform(load_rgb(self.root / self.files[i])), i, True, self.files[i]
        except UNREADABLE:
            return torch.zeros(3, self.size, self.size, device="cpu"), i, False, self.files[i]


class _Streamed(Dataset):
    """Images of a tar-shard or `datasets` source, preprocessed by the model's transform; unreadable: ok=False."""

    def __init__(self, source: TarShards | HFImages, transform, size: int):
        self.source, self.transform, self.size = source, transform, size
        self.files = [source.name(i) for i in range(len(source))]

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        try:
            return self.transform(self.source.open(i)), i, True, self.files[i]
        except UNREADABLE:
            return torch.zeros(3, self.size, self.size, device="cpu"), i, False, self.files[i]


def _source(images, model: VisionModel) -> tuple[_Folder | _Streamed | ModelSpaceDataset, dict[str, Any], int]:
    """(dataset yielding (x, index, ok, name), fingerprint, input size)."""
    streamed = None if isinstance(images, Dataset) else source_for(images)
    if streamed is not None:
        return _Streamed(streamed, model.transform(), model.size), streamed.fingerprint(), model.size
    if isinstance(images, Dataset):
        n = len(images)  # type: ignore[arg-type]  # a map-style Dataset has a length
        if n == 0:
            raise VitalError("the dataset to mine is empty")
        first = ModelSpaceDataset(images)[0][0]
        if first.shape[-1] != first.shape[-2]:
            raise VitalError(f"dataset images are {tuple(first.shape[-2:])}; mining needs square inputs as the "
                             "model's preprocessing makes them (Resize + CenterCrop)")
        return ModelSpaceDataset(images), {"kind": "dataset", "class": type(images).__name__, "count": n}, first.shape[-1]
    root = Path(images).expanduser().resolve()
    files = [p.relative_to(root).as_posix() for p in list_images(root)]
    if not files:
        raise VitalError(f"image folder {root} holds no images; point --images at a folder of JPEG/PNG files")
    digest = hashlib.sha256("\n".join(files).encode()).hexdigest()
    fingerprint = {"kind": "folder", "root": str(root), "count": len(files), "sha256": digest}
    return _Folder(root, files, model.transform(), model.size), fingerprint, model.size


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


def _check_arguments(layers: Sequence[str], k: int, n_images: int | None, batch_size: int, workers: int,
                     checkpoint_every: int, grid: bool, out, patch: str, decode: str) -> None:
    if patch not in PATCH_RULES:
        raise VitalError(f"unknown patch rule '{patch}'; use one of {', '.join(PATCH_RULES)}")
    if decode not in DECODERS:
        raise VitalError(f"unknown decoder '{decode}'; use one of {', '.join(DECODERS)}")
    if k < 1 or (n_images is not None and n_images < 1):
        raise VitalError(f"k and n_images must be at least 1, got k={k}, n_images={n_images}")
    if batch_size < 1 or checkpoint_every < 1 or workers < 0:
        raise VitalError("batch_size and checkpoint_every must be at least 1 and workers at least 0")
    if not layers:
        raise VitalError("no layers to mine; name at least one (`vital layers MODEL` lists them)")
    if grid and out is None:
        raise VitalError("grid=True needs an out folder to write the grids to")


PATCH_RULES = ("auto", "theoretical", "effective")
DECODERS = ("pil", "device")
EFFECTIVE_SAMPLE = 16  # images (the first readable ones) on which the effective field is measured


def _stamp(path: Path) -> str:
    try:
        st = os.stat(path)
        return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return f"{path.name}:missing"


def _fields(model: VisionModel, layers: list[str], data: _Folder | _Streamed | ModelSpaceDataset, size: int, patch: str
            ) -> dict[str, ReceptiveField]:
    """Each layer's receptive field; with the effective field measured where `patch` asks for it ("auto": only
    where the theoretical field covers the whole input, so that deep layers still get patches)."""
    rfs = receptive_fields(model.module, list(layers), size)
    need = [n for n, rf in rfs.items() if patch == "effective" or (patch == "auto" and rf.is_global)]
    if need:
        candidates = range(min(len(data), 4 * EFFECTIVE_SAMPLE))

        def sample() -> torch.Tensor:
            x = torch.stack([item[0] for item in (data[i] for i in candidates) if item[2]][:EFFECTIVE_SAMPLE])
            return x.to(device=model.device, dtype=model.dtype)

        key = None
        if isinstance(data, _Folder):  # the sample's files by name, size and time: no decoding to look it up
            stats = [_stamp(data.root / data.files[i]) for i in candidates]
            key = hashlib.sha256(json.dumps([str(data.root), stats, _preprocessing(model, size)]).encode()).hexdigest()
        for n, (side, offset) in effective_fields(model.module, need, sample, size, sample_key=key).items():
            # a global field says nothing of where a unit looks: take the measured centre of its effective field
            rfs[n] = dataclasses.replace(rfs[n], effective=side, offset=offset if rfs[n].is_global else rfs[n].offset)
    return rfs


DIRECTIONS = ":directions"  # the pseudo-layer "<layer>:directions": one channel per direction of that layer


class _Maps:
    """What is mined per batch: the map of each layer, and for a layer given directions, the map of each
    direction's readout sum_c v_c a_c (the channels of its pseudo-layer "<layer>:directions")."""

    def __init__(self, module, layers: Sequence[str], directions: dict[str, torch.Tensor]):
        self.base = FeatureExtractor(module, list(dict.fromkeys([*layers, *directions])), view="map")
        self.directions = {f"{n}{DIRECTIONS}": (n, v.detach().float()) for n, v in directions.items()}
        self.layers = [*dict.fromkeys(layers), *self.directions]

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.base(x)
        out = {n: feats[n] for n in self.layers if n in feats}
        for name, (n, v) in self.directions.items():
            if v.shape[1] != feats[n].shape[1]:
                raise VitalError(f"directions of '{n}' have {v.shape[1]} components but the layer has "
                                 f"{feats[n].shape[1]} channels")
            out[name] = torch.einsum("bchw,kc->bkhw", feats[n], v.to(feats[n]))
        return out


def _header(model: VisionModel, extractor: _Maps, fingerprint: dict[str, Any], size: int, k: int,
            n_images: int, rfs: dict[str, ReceptiveField], decode: str = "pil") -> dict[str, Any]:
    """The store's header: what it is mined for (model, layers with their shapes and receptive fields, image set,
    preprocessing, k)."""
    layers = list(extractor.layers)
    with torch.no_grad():
        x = torch.zeros(1, 3, size, size, device=model.device, dtype=model.dtype)
        shapes = {name: tuple(a.shape[1:]) for name, a in extractor(x).items()}
    header = {
        "format": FORMAT, "model": model.name, "weights_id": model.weights_id,
        "layers": {name: {"channels": shapes[name][0], "shape": list(shapes[name]),
                          "receptive_field": rfs[name].as_dict(),
                          **({"directions": extractor.directions[name][1].tolist()}
                             if name in extractor.directions else {})} for name in layers},
        "k": k, "n_images": n_images, "dataset": fingerprint, "preprocessing": _preprocessing(model, size, decode),
    }
    return header


class _Pass:
    """One mining pass (fresh or resumed): the running lists, checkpoints and the finished store.

    `state` = (lists per layer, images seen, unreadable files) is replaced as a whole after each batch, so an
    interruption leaves it at a batch boundary and a checkpoint never holds half a batch."""

    def __init__(self, header: dict[str, Any], path: Path | None, data: _Folder | _Streamed | ModelSpaceDataset,
                 saved: dict[str, Any] | None,
                 device: torch.device):
        self.header, self.path, self.data = header, path, data
        self.k, self.n_images = header["k"], header["n_images"]
        self.folder = isinstance(data, (_Folder, _Streamed))  # names known up front
        self.names = list(data.files) if isinstance(data, (_Folder, _Streamed)) else [""] * len(data)
        layers = header["layers"]
        if saved is None:
            self.state: tuple[dict[str, Lists], int, list[str]] = (
                {name: _empty(info["channels"], device) for name, info in layers.items()}, 0, [])
            self.created = time.strftime("%Y-%m-%dT%H:%M:%S")
        else:
            self.state = ({name: tuple(t.to(device) for t in saved["lists"][name]) for name in layers},
                          saved["seen"], saved["skipped"])
            self.created = saved["created"]
            self.names = self.names if self.folder else saved["names"]

    def checkpoint(self, complete: bool) -> None:
        if self.path is None:
            return
        lists, seen, skipped = self.state
        saving = {"seen": seen, "skipped": skipped, "created": self.created, "complete": complete,
                  "lists": {name: tuple(t.cpu() for t in ls) for name, ls in lists.items()},
                  "names": [] if self.folder else self.names}
        if complete:
            saving["final"] = {name: final_tensors(ls, self.k, self.n_images) for name, ls in lists.items()}
            write_json(self.names, self.path / FILES)
        atomic_write(self.path / STATE, lambda f: torch.save(saving, f))
        write_json(store_index(self.header, seen, skipped, complete, self.created), self.path / INDEX)

    def scan(self, model: VisionModel, extractor: _Maps, rfs: dict[str, ReceptiveField], size: int,
             batch_size: int, workers: int, checkpoint_every: int, progress: bool, decode: str = "pil") -> None:
        """Merge every image not seen yet into the lists, batch by batch, checkpointing as it goes (and on an
        interruption). `decode="device"`: the loader reads JPEG bytes and the model's device decodes them."""
        device, dtype, m = model.device, model.dtype, max(self.k, self.n_images)
        start = self.state[1]
        data: Dataset = self.data
        decoder = None
        if decode == "device":
            assert isinstance(self.data, _Folder)
            data = RawFolder(self.data.root, self.data.files, self.data.transform, self.data.size)
            decoder = DeviceDecoder(model, size)
        loader = DataLoader(Subset(data, range(start, len(self.data))), batch_size=batch_size, shuffle=False,
                            num_workers=workers, pin_memory=device.type == "cuda",
                            collate_fn=collate if decoder is not None else collate_pixels)
        bar = tqdm(total=len(self.data), initial=start, unit="img", desc="mining", disable=not progress,
                   dynamic_ncols=True)
        try:
            with torch.no_grad():
                for step, (x, idx, ok, ident) in enumerate(loader, 1):
                    if decoder is not None:
                        x, decoded = decoder(x)
                        ok = ok & decoded
                    ok = ok & torch.isfinite(x).flatten(1).all(1).cpu()  # a NaN or inf image is unreadable, not a score
                    lists, seen, skipped = self.state
                    for i, name in zip(idx.tolist(), ident, strict=True):
                        self.names[i] = name
                    if bool(ok.any()):
                        feats = extractor(x[ok.to(x.device)].to(device=device, dtype=dtype, non_blocking=True))
                        lists = {name: _merge(ls, feats[name], idx[ok], rfs[name], size, m) for name, ls in lists.items()}
                    self.state = (lists, seen + len(ok), skipped + [self.names[i] for i in idx[~ok].tolist()])
                    bar.update(len(ok))
                    if step % checkpoint_every == 0:
                        self.checkpoint(False)
        except BaseException:
            self.checkpoint(False)  # keep the work done up to the last whole batch
            raise
        finally:
            bar.close()

    def finish(self, images) -> MiningStore:
        """The complete store (written, with `out`); an error if no image could be read, a warning for skipped."""
        lists, seen, skipped = self.state
        if seen == len(skipped):
            raise VitalError(f"none of the {len(self.data)} images in {self.header['dataset'].get('root', 'the dataset')}"
                             " could be read; point --images at a folder of JPEG/PNG images")
        if skipped:
            warnings.warn(f"skipped {len(skipped)} unreadable image(s): {', '.join(skipped[:5])}"
                          + (" ..." if len(skipped) > 5 else ""), stacklevel=3)
        self.checkpoint(True)
        final = {name: final_tensors(ls, self.k, self.n_images) for name, ls in lists.items()}
        index = store_index(self.header, seen, skipped, True, self.created)
        return MiningStore(index, final, self.names, self.path, images)


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
    patch: str = "auto",
    directions: dict[str, Any] | None = None,
    decode: str = "pil",
) -> MiningStore:
    """Mine the top `n_images` (default k) images and top `k` patches (distinct images) of every channel of
    `layers` in one pass over `images`: a folder (searched recursively, preprocessed by the model's transform) or
    a Dataset of model-space tensors (optionally with a path or id as the second element).

    With `out`, the store is written there, checkpointed every `checkpoint_every` batches and on interruption;
    calling again with the same arguments resumes (`resume=False` starts over) or, once complete, just loads it.
    `grid=True` also writes grid_<layer>.png per layer.

    `patch`: the size of the patch boxes. "theoretical": the layer's receptive field; "effective": its effective
    field (the centre that holds 3/4 of a unit's input-gradient mass, measured on the first images); "auto": the
    theoretical field, or the effective one where the theoretical field covers the whole input (deep layers).

    `directions`: {layer: vectors (K, C) or one (C,)}: each direction is mined too, by its readout sum_c v_c a_c,
    as channel k of the pseudo-layer "<layer>:directions" (the references of a `Direction` target).

    `decode`: "pil" (the model's transform in the loader) or "device" (folders: JPEG files decoded and preprocessed
    on the model's device, `vital.references.decode`; the others through PIL)."""
    _check_arguments(list(layers) or list(directions or {}), k, n_images, batch_size, workers, checkpoint_every,
                     grid, out, patch, decode)
    vectors = {n: torch.as_tensor(v, dtype=torch.float32).reshape(-1, torch.as_tensor(v).shape[-1])
               for n, v in (directions or {}).items()}
    extractor = _Maps(model.module, layers, vectors)
    data, fingerprint, size = _source(images, model)
    if decode == "device" and not isinstance(data, _Folder):
        raise VitalError("decode='device' decodes the JPEG files of a folder; tar shards, datasets and tensors "
                         "are decoded by the loader (leave decode at 'pil')")
    rfs = _fields(model, list(extractor.base.layers), data, size, patch)
    rfs.update({name: rfs[base] for name, (base, _) in extractor.directions.items()})
    header = _header(model, extractor, fingerprint, size, k, n_images or k, rfs, decode)
    path = Path(out) if out is not None else None
    saved = open_store(path, header, resume) if path is not None else None
    if path is not None and saved is not None and saved["complete"]:
        store = MiningStore.load(path, images)
    else:
        run = _Pass(header, path, data, saved, model.device)
        run.scan(model, extractor, rfs, size, batch_size, workers, checkpoint_every, progress, decode)
        store = run.finish(images)
    if grid:
        for name in header["layers"]:
            store.grid(name)
    return store
