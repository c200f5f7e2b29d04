"""Where each target's references come from, as one rule shared by `vital class|neuron|compare|batch`:
`offline` photos (classes), an ImageNet-style `class-folder`, one shared `folder`, a mining `store` (channels: its
top images or patches), or `none` (baselines that use no references)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vital.errors import VitalError
from vital.references.images import ReferenceSet, from_class_folder, from_folder
from vital.targets import Channel, Class, Direction, Target

REFERENCE_SOURCES = ("none", "offline", "folder", "class-folder", "store")
OFFLINE_MAX_VIEWS = 32


def direction_channel(store, t: Direction) -> tuple[str, int]:
    """(pseudo-layer, channel) under which `store` mined direction `t` (`mine(..., directions=...)`)."""
    import torch

    from vital.references.mining import DIRECTIONS

    name = f"{t.layer}{DIRECTIONS}"
    info = store.index["layers"].get(name)
    if info is None:
        raise VitalError(f"the store at {store.path} mined no directions of '{t.layer}'; mine them with "
                         f"`vital mine ... --layers {t.layer} --directions FILE`")
    vectors = torch.tensor(info["directions"], dtype=torch.float64, device="cpu")
    want = torch.tensor(t.vector, dtype=torch.float64, device="cpu")
    if vectors.shape[1] != want.numel():
        raise VitalError(f"the store's directions of '{t.layer}' have {vectors.shape[1]} components, not {want.numel()}")
    match = [k for k in range(len(vectors)) if torch.allclose(vectors[k], want, rtol=1e-5, atol=1e-6)]
    if not match:
        raise VitalError(f"the store at {store.path} did not mine this direction of '{t.layer}'; mine it with "
                         "--directions FILE")
    return name, match[0]


def folder_kind(path: Path) -> str:
    """"class-folder" for a folder of class sub-folders (the ImageNet train layout), "folder" for a plain folder of
    images; a folder with both is ambiguous and an error that says so."""
    from vital.references.images import IMAGE_EXTENSIONS

    try:
        entries = list(path.iterdir()) if path.is_dir() else []
    except OSError as e:
        raise VitalError(f"cannot read the folder {path} ({e.strerror or type(e).__name__})") from e
    subfolders = any(p.is_dir() for p in entries)
    images = any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in entries)
    if subfolders and images:
        raise VitalError(f"--refs {path} holds both images and sub-folders: is it one folder of images for every "
                         "target (--refs-flat) or one sub-folder per class? Move the loose images or pass --refs-flat")
    return "folder" if images else "class-folder"


@dataclass(frozen=True)
class ReferenceSpec:
    source: str = "none"
    path: str | None = None
    n: int = 50
    kind: str = "patches"  # from a store; the paper crops the top-k patches (bench/RESULTS.md: better KID)

    def __post_init__(self) -> None:
        if self.source not in REFERENCE_SOURCES:
            raise VitalError(f"unknown reference source '{self.source}'; use one of {', '.join(REFERENCE_SOURCES)}")
        if self.source in ("folder", "class-folder", "store") and not self.path:
            raise VitalError(f"references from a {self.source} need a path (--refs PATH)")
        if self.kind not in ("images", "patches"):
            raise VitalError(f"unknown reference kind '{self.kind}'; use images or patches")
        from vital import validate

        validate.integer("the number of references (-n)", self.n, low=1, optional=False)

    @staticmethod
    def flag_fields(refs: str, flat: bool = False, classes: bool = True) -> dict[str, str]:
        """What a `--refs` value means: offline, none, a store (a folder with index.json), one flat folder (with
        --refs-flat, or for channels), else an ImageNet-style class folder."""
        if refs in ("offline", "none"):
            return {"source": refs}
        path = Path(refs)
        if (path / "index.json").is_file():
            return {"source": "store", "path": refs}
        if flat or not classes:
            return {"source": "folder", "path": refs}
        return {"source": folder_kind(path), "path": refs}

    @classmethod
    def from_flag(cls, refs: str, flat: bool = False, classes: bool = True, n: int = 50,
                  kind: str = "patches") -> ReferenceSpec:
        return cls(**cls.flag_fields(refs, flat, classes), n=n, kind=kind)

    def resolve(self, targets: Sequence[Target], seed: int = 0) -> list[ReferenceSet | None]:
        """One reference set per target (a shared folder is one object, loaded once per run)."""
        if self.source == "none":
            return [None] * len(targets)
        if self.source in ("folder", "store", "class-folder") and self.path is None:
            raise VitalError(f"a {self.source} reference rule needs a path")
        path = str(self.path)
        if self.source == "folder":
            return [from_folder(path, n=self.n, seed=seed)] * len(targets)
        if self.source == "store":
            from vital.references.mining import MiningStore

            store = MiningStore.load(path)
            return [store.references(t.layer, t.channel, self.kind, self.n) if isinstance(t, Channel)
                    else store.references(*direction_channel(store, t), self.kind, self.n)
                    if isinstance(t, Direction) else self._not_for(t) for t in targets]
        if self.source == "class-folder":
            return [from_class_folder(path, t.index, n=self.n, seed=seed) if isinstance(t, Class)
                    else self._not_for(t) for t in targets]
        from vital.references.photos import photo_references

        return [photo_references(t.index, n=min(self.n, OFFLINE_MAX_VIEWS), seed=seed) if isinstance(t, Class)
                else self._not_for(t) for t in targets]

    def _not_for(self, t: Target):
        raise VitalError(f"references from a {self.source} do not apply to {t}; use a mining store for channels and "
                         "offline photos or a class folder for classes")
