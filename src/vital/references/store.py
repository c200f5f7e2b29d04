"""The store that `vital.references.mining.mine` writes: per channel of the mined layers, its top images and
patches (best first), with the index (model, layers, image set, preprocessing) that says what it was mined for.

On disk: `index.json` (the header and progress), `topk.pt` (the running lists while mining, the final tensors once
complete) and `files.json` (the image names). `MiningStore.load` reopens a complete store; `references` turns a
channel's top images or patches into a `ReferenceSet`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from vital.errors import VitalError
from vital.models.zoo import VisionModel
from vital.outputs.io import atomic_write
from vital.pages import display
from vital.references.images import ReferenceSet, load_rgb
from vital.references.store_files import FILES, INDEX, STATE, read_files, read_index


def _crop_resize(resize: int, size: int, interpolation: str):
    """The model's preprocessing up to, not including, tensor conversion and normalisation (PIL -> PIL)."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(resize, interpolation=T.InterpolationMode(interpolation), antialias=True),
                      T.CenterCrop(size)])


class ModelSpaceDataset(Dataset):
    """A user Dataset of model-space tensors, optionally with a path or id as the second element."""

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]  # a map-style Dataset has a length

    def __getitem__(self, i: int):
        item = self.data[i]
        x, ident = (item[0], item[1] if len(item) > 1 else None) if isinstance(item, (tuple, list)) else (item, None)
        if not torch.is_tensor(x) or x.dim() != 3:
            raise VitalError(f"dataset item {i} is {type(x).__name__}, not a (3, H, W) tensor in the model's input "
                             "space; pass an image folder or wrap the data in a Dataset that returns one")
        return x, i, True, str(ident) if isinstance(ident, (str, os.PathLike)) else ""


class MiningStore:
    """Top images and patches per channel of the mined layers. Built by `mine`; `MiningStore.load` reopens it.

    Tensors per layer: image_scores / image_index (C, N), patch_scores / patch_index (C, k), patch_boxes (C, k, 4)
    as (left, top, right, bottom) in the preprocessed size x size image. Indices point into `files`."""

    def __init__(self, index: dict[str, Any], tensors: dict[str, dict[str, torch.Tensor]], files: list[str],
                 path: Path | None = None, images: str | os.PathLike | Dataset | None = None):
        self.index, self.tensors, self.files, self.path = index, tensors, files, path
        self.dataset = images if isinstance(images, Dataset) else None
        ds = index["dataset"]
        self.root = Path(images) if isinstance(images, (str, os.PathLike)) and ds["kind"] == "folder" else (
            Path(ds["root"]) if ds["kind"] == "folder" else None)
        self._source: Any = None  # a tar-shard or `datasets` source, opened when its pixels are first needed

    @classmethod
    def load(cls, path: str | os.PathLike, images: str | os.PathLike | Dataset | None = None) -> MiningStore:
        """Open a complete store. `images`: the image folder if it moved, or the Dataset it was mined from (needed
        for pixels of a Dataset-mined store)."""
        path = Path(path)
        if not (path / INDEX).is_file():
            raise VitalError(f"{path} is not a mining store (no {INDEX}); create one with `vital mine`")
        index, channels = read_index(path)
        complete, dataset = index["complete"], index["dataset"]
        if not complete:
            raise VitalError(f"store at {path} is incomplete ({index.get('images_processed')} of "
                             f"{dataset.get('count')} images); run `vital mine` again with the same arguments "
                             "to finish it")
        if not (path / STATE).is_file() or not (path / FILES).is_file():
            raise VitalError(f"store at {path} lacks {STATE if not (path / STATE).is_file() else FILES}; mine again "
                             "into a new folder")
        try:
            tensors = torch.load(path / STATE, map_location="cpu", weights_only=True)["final"]
        except Exception as e:  # truncated, random bytes, or something that is not a store's state
            raise VitalError(f"{path / STATE} is damaged or not a mining store's data ({type(e).__name__}); mine "
                             "again into a new folder") from e
        files = read_files(path, index, channels, tensors)
        return cls(index, tensors, files, path, images)

    @property
    def layers(self) -> list[str]:
        return list(self.index["layers"])

    def _repr_html_(self) -> str:  # Jupyter: what was mined and a grid of top patches
        return display.store_html(self)

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
        self._check_channel(layer, channel)

    def _check_channel(self, layer: str, channel: int | None) -> None:
        """A channel index (if given) must be one of the mined layer's channels."""
        channels = self.index["layers"][layer]["channels"]
        if channel is not None and not 0 <= channel < channels:
            raise VitalError(f"channel {channel} is out of range: layer '{layer}' has {channels} channels "
                             f"(0-{channels - 1})")

    def _layer(self, layer: str, channel: int | None = None) -> dict[str, torch.Tensor]:
        if layer not in self.tensors:
            raise VitalError(f"store has no layer '{layer}' (mined: {', '.join(self.layers)}); mine it first")
        self._check_channel(layer, channel)
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

    def patch_sources(self, layer: str, channel: int) -> list[tuple[int, float, tuple[int, int, int, int]]]:
        """(image index, score, box) of the top patches, best first: `pixels(index)` is the image the box is on."""
        t = self._layer(layer, channel)
        return [(i, s, tuple(b)) for i, s, b in zip(t["patch_index"][channel].tolist(),
                                                    t["patch_scores"][channel].tolist(),
                                                    t["patch_boxes"][channel].tolist(), strict=True)]

    def distinct_channels(self, layer: str, n: int, k: int | None = None, overlap: float = 0.25,
                          group: Callable[[str], str] | None = None) -> list[tuple[int, float]]:
        """Up to `n` channels worth looking at, with their strength: strength = k-th over first top patch score
        (a channel that many images drive about equally, not one outlier), taken strongest first, skipping any
        channel whose top-k sources (files, or `group(file)`, e.g. the photo a crop came from) overlap an already
        chosen one's by more than `overlap` (Jaccard)."""
        t = self._layer(layer)
        k = k or t["patch_scores"].shape[1]
        scores = t["patch_scores"][:, :k]
        strength = torch.where(scores[:, 0] > 0, scores[:, -1] / scores[:, 0].clamp(min=1e-12), scores.new_zeros(()))
        key = group or (lambda f: f)
        sources = [{key(self._name(i)) for i in t["patch_index"][c, :k].tolist()} for c in range(len(scores))]
        chosen: list[int] = []
        for c in strength.argsort(descending=True).tolist():
            if len(chosen) == n:
                break
            if all(len(sources[c] & sources[d]) / len(sources[c] | sources[d]) <= overlap for d in chosen):
                chosen.append(c)
        return [(c, float(strength[c])) for c in chosen]

    def pixels(self, i: int) -> Image.Image:
        """Image i as the model sees it (resized and centre-cropped), un-normalised, as PIL."""
        prep = self.index["preprocessing"]
        if self.index["dataset"]["kind"] == "folder":
            if self.root is None or not (self.root / self.files[i]).is_file():
                raise VitalError(f"image {self.files[i]} is not under {self.root}; pass the folder's new place as "
                                 "MiningStore.load(path, images=FOLDER)")
            return _crop_resize(prep["resize"], prep["size"], prep["interpolation"])(load_rgb(self.root / self.files[i]))
        if self.index["dataset"]["kind"] in ("webdataset", "hf-datasets"):
            from vital.references.sources import open_source

            if self._source is None:
                self._source = open_source(self.index["dataset"])
            return _crop_resize(prep["resize"], prep["size"], prep["interpolation"])(self._source.open(i))
        if self.dataset is None:
            raise VitalError("this store was mined from a Dataset: pass it as MiningStore.load(path, images=DATASET) "
                             "to see its pixels")
        x = ModelSpaceDataset(self.dataset)[i][0].float()
        mean = torch.tensor(prep["mean"], device="cpu").view(3, 1, 1)
        std = torch.tensor(prep["std"], device="cpu").view(3, 1, 1)
        x01 = (x.cpu() * std + mean).clamp(0, 1)
        return Image.fromarray((x01 * 255).round().byte().permute(1, 2, 0).numpy())

    def references(self, layer: str, channel: int, kind: str = "patches", n: int | None = None) -> ReferenceSet:
        """The channel's references, best first: patches cropped from the preprocessed image and resized to the
        model's input size (the paper's reference set, the default), or whole images (files when they exist)."""
        if kind not in ("images", "patches"):
            raise VitalError(f"unknown reference kind '{kind}'; use 'images' or 'patches'")
        made: dict[str, Any] = {
            "source": f"{self.path or 'mining store'}:{layer}:{channel}:{kind}", "requested": n,
            "origin": {"kind": "mined", "store": str(Path(self.path).resolve()) if self.path else None,
                       "layer": layer, "channel": channel, "ref_kind": kind, "n": n}}
        if kind == "patches":
            return ReferenceSet(images=self._patches(layer, channel, n), **made)
        names = [name for name, _ in self.top_images(layer, channel)][:n]
        if self.root is not None:
            return ReferenceSet(files=[self.root / f for f in names], **made)
        if names and all(Path(f).is_file() for f in names):
            return ReferenceSet(files=[Path(f) for f in names], **made)
        index = self._layer(layer, channel)["image_index"][channel][:n].tolist()
        return ReferenceSet(images=[(self._name(i), self.pixels(i)) for i in index], **made)

    def _patches(self, layer: str, channel: int, n: int | None) -> list[tuple[str, Image.Image]]:
        prep = self.index["preprocessing"]
        size = prep["size"]
        resample = Image.Resampling[prep["interpolation"].upper()]
        t = self._layer(layer, channel)
        out = []
        for i, box in zip(t["patch_index"][channel][:n].tolist(), t["patch_boxes"][channel][:n].tolist(), strict=True):
            crop = self.pixels(i).crop(tuple(box)).resize((size, size), resample)
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
