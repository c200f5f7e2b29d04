"""Reference image sets: robust loading, ImageNet-style class folders, WordNet ids, seeded sampling.

A `ReferenceSet` is a list of image files (or in-memory images) plus how they were chosen; it is turned into
tensors with a model's own preprocessing only when a run needs them, at the resolution the run needs.

How they were chosen is said twice: `source`, a line for people, and `origin`, a small JSON-ready dict that every
constructor fills and the run record keeps, from which `vital.rerun` rebuilds the set:

- {"kind": "folder", "path", "n", "seed"} / {"kind": "class_folder", "root", "class", "n", "seed"}: sampled files;
- {"kind": "files", "list"}: explicit paths (or a text file listing them);
- {"kind": "photo", "class", "name", "n", "seed"}: seeded views of an offline photo (`references.photos`);
- {"kind": "mined", "store", "layer", "channel", "ref_kind", "n"}: a mining store's top images or patches;
- {"kind": "memory"}: images handed over in memory, which a record cannot rebuild.
"""

from __future__ import annotations

import hashlib
import os
import random
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from vital.errors import VitalError, closest
from vital.outputs.io import file_sha256

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}


# What reading one image may raise: a missing or unreadable file, not an image, a truncated or corrupt one, or one
# over PIL's decompression-bomb limit. One such file is skipped, never the end of a run.
UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def load_rgb(path: str | os.PathLike | IO[bytes]) -> Image.Image:
    """Open an image (a path or a file object) as RGB: grayscale, CMYK, palette and 16-bit are converted; alpha is
    composited on white."""
    with Image.open(path) as opened:
        im: Image.Image = ImageOps.exif_transpose(opened)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            return Image.alpha_composite(bg, im).convert("RGB")
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            im = im.point(lambda v: v / 256).convert("L")
        return im.convert("RGB")


def as_path(value: object, what: str = "folder") -> Path:
    """`value` as a path, or a one-line error naming what was expected (not Path's TypeError)."""
    if isinstance(value, (str, os.PathLike)) and str(value):
        return Path(value)
    raise VitalError(f"{what} must be a path (a str or pathlib.Path), got {value!r}")


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under `folder`, sorted, by extension."""
    folder = as_path(folder, "image folder")
    try:
        if not folder.is_dir():
            raise VitalError(f"image folder {folder} does not exist or is not a folder")
        it = folder.rglob("*") if recursive else folder.iterdir()
        return sorted(p for p in it if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    except OSError as e:
        raise VitalError(f"cannot read the folder {folder} ({e.strerror or type(e).__name__}); check its "
                         "permissions") from e


@dataclass
class ReferenceSet:
    """Files (or named in-memory images) to align to, plus how they were chosen: `source` in words, `origin` as
    a dict that rebuilds them (see the module docstring)."""

    files: list[Path] = field(default_factory=list)
    images: list[tuple[str, Image.Image]] = field(default_factory=list)
    source: str = ""
    requested: int | None = None
    origin: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.files) + len(self.images)

    skipped: dict[str, str] = field(default_factory=dict)  # unreadable file -> why, filled by `load`
    hashes: dict[str, str] = field(default_factory=dict)  # file -> SHA-256 of the bytes that were read
    spares: list[Path] = field(default_factory=list)  # the rest of a sampled folder, in seeded order: replacements

    def describe(self) -> list[dict]:
        """The files that were used, with SHA-256 hashes (taken when they were read, so a file that turns
        unreadable after loading cannot lose the run), for the run record; skipped files are in `skipped`."""
        out = []
        for p in self.files:
            if str(p) in self.skipped:
                continue
            digest = self.hashes.get(str(p))
            if digest is None:
                try:
                    digest = file_sha256(p)
                except OSError:
                    continue
            out.append({"file": str(p), "sha256": digest})
        for name, im in self.images:
            out.append({"file": name, "sha256": hashlib.sha256(im.tobytes()).hexdigest()})
        return out

    def thumbnails(self, n: int) -> list[Image.Image]:
        """Up to n of the references as images, to show beside a visualization: the in-memory ones first, then
        files that can be read (an unreadable file is left out, never an error)."""
        out = [im for _, im in self.images[:n]]
        for p in self.files:
            if len(out) >= n:
                break
            try:
                out.append(load_rgb(p))
            except UNREADABLE:
                continue
        return out

    def load(self, transform, *, strict_count: int | None = None) -> torch.Tensor:
        """Apply `transform` (PIL -> tensor) to every readable image; unreadable files are skipped with a warning
        and listed in `skipped`.

        A file sampled from a folder that cannot be read is replaced by the next of the folder's other files (in the
        sample's seeded order), so a few bad files do not shrink the set. Returns (N, 3, H, W). No readable image
        at all is an error."""
        tensors, bad = [], []
        queue = list(self.files)
        while queue:
            p = queue.pop(0)
            if str(p) in self.skipped:  # found unreadable by an earlier load: its replacement is in `files`
                continue
            try:
                digest = file_sha256(p)
                tensors.append(transform(load_rgb(p)))
                self.hashes[str(p)] = digest
            except UNREADABLE as e:
                self.skipped[str(p)] = type(e).__name__
                bad.append(f"{p.name} ({type(e).__name__})")
                if self.spares:
                    self.files.append(self.spares[0])
                    queue.append(self.spares.pop(0))
        tensors += [transform(im.convert("RGB")) for _, im in self.images]
        if bad:
            warnings.warn(f"skipped {len(bad)} unreadable reference image(s): {', '.join(bad[:5])}"
                          + (" ..." if len(bad) > 5 else ""), stacklevel=2)
        if not tensors:
            raise VitalError(f"none of the {len(self)} reference images in {self.source or 'the set'} could be read; "
                             "point --refs at a folder of JPEG/PNG images")
        want = strict_count or self.requested
        if want and len(tensors) < want:
            warnings.warn(f"only {len(tensors)} readable reference images for {self.source}, {want} asked for",
                          stacklevel=2)
        return torch.stack(tensors)


def _sample(files: Sequence[Path], n: int | None, seed: int) -> tuple[list[Path], list[Path]]:
    """(`n` files drawn with `seed`, sorted; the others in a seeded order, the replacements of unreadable ones)."""
    files = list(files)
    if n is None or n >= len(files):
        return files, []
    rng = random.Random(seed)
    chosen = rng.sample(files, n)
    taken = set(chosen)
    rest = [p for p in files if p not in taken]
    rng.shuffle(rest)
    return sorted(chosen), rest


def _check_n(n: int | None) -> None:
    from vital import validate

    validate.integer("the number of references (n)", n, low=1)


def class_folders(root: str | os.PathLike) -> list[Path]:
    """The class sub-folders of an ImageNet `train/` layout, sorted."""
    root = as_path(root, "reference folder")
    if not root.is_dir():
        raise VitalError(f"reference folder {root} does not exist")
    return sorted(p for p in root.iterdir() if p.is_dir())


def _class_folder(root: str | os.PathLike, folders: list[Path], cls: int | str) -> Path:
    """The folder of class `cls`: by name (a WordNet id or any folder name); an index is read through the
    ImageNet class index when every folder is one of the 1000 ImageNet WordNet ids (any subset of them), else it
    is the position among the sorted folders."""
    by_name = {p.name: p for p in folders}
    if isinstance(cls, str) and not cls.isdigit():
        if cls not in by_name:
            raise VitalError(f"no class folder '{cls}' in {root}.{closest(cls, by_name)}")
        return by_name[cls]
    k = int(cls)
    from vital.references.wnids import IMAGENET_WNIDS

    if set(by_name) <= set(IMAGENET_WNIDS):  # an ImageNet folder, whole or a subset: read by id
        wnid = IMAGENET_WNIDS[k] if 0 <= k < len(IMAGENET_WNIDS) else None
        if wnid is None:
            raise VitalError(f"class {k} is out of range: {root} holds WordNet-id folders of the 1000 ImageNet "
                             "classes (0-999)")
        if wnid not in by_name:
            held = ", ".join(sorted(by_name)[:3]) + (" ..." if len(by_name) > 3 else "")
            raise VitalError(f"class {k} ({wnid}) has no folder: out of range of the {len(folders)} class folders in "
                             f"{root}, which are read by their ImageNet WordNet ids ({held})")
        return by_name[wnid]
    if not 0 <= k < len(folders):
        raise VitalError(f"class {k} is out of range: {root} has {len(folders)} class folders (0-{len(folders) - 1})")
    return folders[k]


def from_class_folder(root: str | os.PathLike, cls: int | str, n: int | None = 50, seed: int = 0) -> ReferenceSet:
    """References for class `cls` of an ImageNet-style folder: a folder name such as a WordNet id (n01440764), or
    a class index: through the ImageNet class index when the sub-folders are WordNet ids, else the position among
    the sorted folders. `n` images are sampled with `seed`."""
    _check_n(n)
    if isinstance(cls, bool) or not isinstance(cls, (int, str)):
        raise VitalError(f"class must be an index or a folder name, got {cls!r}")
    folders = class_folders(root)
    if not folders:
        raise VitalError(f"{root} has no class sub-folders; use a plain image folder with from_folder / --refs-flat")
    folder = _class_folder(root, folders, cls)
    if not (isinstance(cls, str) and not cls.isdigit()):
        cls = int(cls)
    files = list_images(folder)
    if not files:
        raise VitalError(f"class folder {folder} holds no images")
    origin = {"kind": "class_folder", "root": str(Path(root).resolve()), "class": cls, "n": n, "seed": seed}
    chosen, spares = _sample(files, n, seed)
    return ReferenceSet(chosen, source=str(folder), requested=n, origin=origin, spares=spares)


def from_folder(folder: str | os.PathLike, n: int | None = 50, seed: int = 0) -> ReferenceSet:
    """References from every image under a plain folder (sampled to `n` with `seed`)."""
    _check_n(n)
    files = list_images(folder)
    if not files:
        raise VitalError(f"reference folder {folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    origin = {"kind": "folder", "path": str(Path(folder).resolve()), "n": n, "seed": seed}
    chosen, spares = _sample(files, n, seed)
    return ReferenceSet(chosen, source=str(folder), requested=n, origin=origin, spares=spares)


def from_files(paths: Iterable[str | os.PathLike] | str | os.PathLike, n: int | None = None,
               seed: int = 0) -> ReferenceSet:
    """References from explicit paths, or from a text file listing one path per line (duplicates dropped,
    order kept, the first `n` taken: the file's order is the ranking)."""
    _check_n(n)
    origin: dict[str, str | None]
    if isinstance(paths, (str, os.PathLike)) and Path(paths).suffix.lower() == ".txt":
        listing = Path(paths)
        if not listing.is_file():
            raise VitalError(f"file list {listing} does not exist")
        lines = [ln.strip() for ln in listing.read_text().splitlines() if ln.strip()]
        paths = [Path(ln) if Path(ln).is_absolute() else listing.parent / ln for ln in lines]
        source, origin = str(listing), {"kind": "files", "list": str(listing.resolve())}
    else:
        paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
        source, origin = "file list", {"kind": "files", "list": None}
    files = list(dict.fromkeys(Path(p) for p in paths))
    missing = [p for p in files if not p.is_file()]
    if missing:
        warnings.warn(f"{len(missing)} listed reference file(s) do not exist, e.g. {missing[0]}", stacklevel=2)
        files = [p for p in files if p.is_file()]
    if not files:
        raise VitalError(f"no existing image in {source}")
    return ReferenceSet(files[:n] if n else files, source=source, requested=n, origin=origin)


def from_images(images: Sequence[tuple[str, Image.Image]] | Sequence[Image.Image], source: str = "memory") -> ReferenceSet:
    """References from PIL images already in memory (named for the run record)."""
    named = [(im if isinstance(im, tuple) else (f"image{i}", im)) for i, im in enumerate(images)]
    if not named:
        raise VitalError("no reference images given")
    return ReferenceSet(images=list(named), source=source, origin={"kind": "memory"})
