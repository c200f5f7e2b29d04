"""Image collections that are not folders: WebDataset tar shards and Hugging Face `datasets` saved to disk.

Both are read with random access, so mining checkpoints, resumes and finds a reference's pixels again exactly as
with a folder: a tar shard is indexed once (its members, grouped by sample key as WebDataset does: the part of the
base name before its first dot) and read member by member with the standard library's `tarfile`; a `datasets`
dataset (`save_to_disk`) is opened with `load_from_disk` (Arrow, memory-mapped) and its first image column read.
A source is described by a small dict (`fingerprint`) that the store keeps and `open_source` turns back into it.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path
from typing import Any

from PIL import Image

from vital.errors import VitalError
from vital.references.images import IMAGE_EXTENSIONS, load_rgb


class TarShards:
    """The images of WebDataset tar shards, in shard order and, within a shard, in member order."""

    kind = "webdataset"

    def __init__(self, shards: list[Path]):
        if not shards:
            raise VitalError("no tar shards given")
        self.shards = [Path(s).resolve() for s in shards]
        self.entries: list[tuple[int, str, str]] = []  # (shard, member name, sample key)
        for k, shard in enumerate(self.shards):
            try:
                with tarfile.open(shard) as tar:
                    names = [m.name for m in tar.getmembers() if m.isfile()]
            except (OSError, tarfile.TarError) as e:
                raise VitalError(f"cannot read tar shard {shard} ({type(e).__name__}); is it a tar file?") from e
            for name in names:
                base = name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                if "." + ext.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
                    self.entries.append((k, name, name.rsplit("/", 1)[0] + "/" + key if "/" in name else key))
        if not self.entries:
            raise VitalError(f"the tar shards ({', '.join(s.name for s in self.shards)}) hold no images")
        self._open: dict[int, tarfile.TarFile] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def name(self, i: int) -> str:
        k, _, key = self.entries[i]
        return f"{self.shards[k].name}:{key}"

    def open(self, i: int) -> Image.Image:
        k, member, _ = self.entries[i]
        tar = self._open.get(k)
        if tar is None:  # one handle per shard and process (DataLoader workers open their own)
            tar = self._open[k] = tarfile.open(self.shards[k])
        f = tar.extractfile(member)
        if f is None:
            raise OSError(f"{member} is not a file in {self.shards[k]}")
        return load_rgb(f)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}

    def fingerprint(self) -> dict[str, Any]:
        digest = hashlib.sha256("\n".join(f"{s.name}:{s.stat().st_size}" for s in self.shards).encode())
        return {"kind": self.kind, "shards": [str(s) for s in self.shards], "count": len(self),
                "sha256": digest.hexdigest()}


class HFImages:
    """The images of a Hugging Face `datasets` dataset saved with `save_to_disk` (one split)."""

    kind = "hf-datasets"

    def __init__(self, path: str | os.PathLike, column: str | None = None):
        try:
            import datasets
        except ImportError as e:
            raise VitalError("reading a Hugging Face dataset needs the datasets package: pip install datasets") from e
        self.path = Path(path).resolve()
        try:
            ds = datasets.load_from_disk(str(self.path))
        except Exception as e:  # not a saved dataset, or a damaged one
            raise VitalError(f"cannot open {self.path} as a dataset saved with save_to_disk ({type(e).__name__})") from e
        if isinstance(ds, datasets.DatasetDict):
            raise VitalError(f"{self.path} holds the splits {sorted(ds)}; point at one split's folder")
        images = [n for n, f in ds.features.items() if isinstance(f, datasets.Image)]
        if column is None and not images:
            raise VitalError(f"{self.path} has no image column (features: {', '.join(ds.features)})")
        self.column = column or images[0]
        self.data = ds

    def __len__(self) -> int:
        return len(self.data)

    def name(self, i: int) -> str:
        return f"{self.path.name}#{i}"

    def open(self, i: int) -> Image.Image:
        im = self.data[i][self.column]
        if not isinstance(im, Image.Image):
            raise ValueError(f"row {i} of {self.path} has no image")
        return im.convert("RGB")

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "column": self.column, "count": len(self),
                "fingerprint": getattr(self.data, "_fingerprint", "")}


def source_for(images: Any) -> TarShards | HFImages | None:
    """The source `images` names, when it is not a folder of image files: a .tar shard, a list of them, a folder
    of .tar shards only, or a folder saved by `datasets`; None for a plain image folder."""
    if isinstance(images, (list, tuple)):
        if not all(isinstance(p, (str, os.PathLike)) for p in images):
            raise VitalError(f"images must be a folder, a .tar shard or a list of shards, got {images!r}"[:300])
        return TarShards([Path(p) for p in images])
    if not isinstance(images, (str, os.PathLike)):
        raise VitalError(f"images must be a folder, a .tar shard, a list of shards or a Dataset, got "
                         f"{type(images).__name__} {images!r}"[:300])
    path = Path(images)
    if path.is_file() and path.suffix == ".tar":
        return TarShards([path])
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return HFImages(path)
        shards = sorted(path.glob("*.tar"))
        if shards and not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir()):
            return TarShards(shards)
    return None


def open_source(fingerprint: dict[str, Any]) -> TarShards | HFImages | None:
    """The source a store's dataset fingerprint describes (None for folders and in-memory datasets)."""
    if fingerprint.get("kind") == TarShards.kind:
        return TarShards([Path(s) for s in fingerprint["shards"]])
    if fingerprint.get("kind") == HFImages.kind:
        return HFImages(fingerprint["path"], fingerprint.get("column"))
    return None
