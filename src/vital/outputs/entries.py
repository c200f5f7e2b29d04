"""The parts of a run record (`vital.outputs.record`): the model, each target, each target's references (with
the origin that rebuilds them) and each output file, each read field by field from JSON that may have been edited
by hand, and upgraded where older versions of vital wrote it otherwise."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vital.errors import VitalError
from vital.outputs.fields import Fields, short
from vital.targets import Channel, Class, Direction, Target

if TYPE_CHECKING:
    from vital.models.zoo import VisionModel
    from vital.references.images import ReferenceSet

RECORD = "record.json"
PHOTO_VIEW = re.compile(r"^skimage:(?P<name>[^#]+)#view\d+\(seed=(?P<seed>\d+)\)$")
DAMAGED = f"it is damaged or not a {RECORD} written by vital"


@dataclass
class ModelEntry:
    """The model a run used: its name and weights id (what `load_model` needs) and its preprocessing."""

    name: str
    weights: str
    mean: list[float] | None = None
    std: list[float] | None = None
    size: int | None = None
    resize: int | None = None
    interpolation: str | None = None

    @classmethod
    def of(cls, model: VisionModel) -> ModelEntry:
        return cls(model.name, model.weights_id, list(model.mean), list(model.std), model.size, model.resize,
                   model.interpolation)

    @classmethod
    def read(cls, c: Fields, obj: Any) -> ModelEntry:
        m = c.value(obj, "object", "model")
        out = cls(c.key(m, "name", "text", "model"), c.key(m, "weights", "text", "model"))
        for key in ("mean", "std"):
            if m.get(key) is not None:
                setattr(out, key, c.numbers(m[key], f"model.{key}"))
        out.size = c.key(m, "size", "whole number", "model", optional=True)
        out.resize = c.key(m, "resize", "whole number", "model", optional=True)
        out.interpolation = c.key(m, "interpolation", "text", "model", optional=True)
        return out


@dataclass
class TargetEntry:
    """A target as recorded: the target itself (`vital.Class`, `Channel` or `Direction`) and its label."""

    target: Target
    label: str = ""

    @property
    def kind(self) -> str:
        """"class", "channel" or "direction", as the record writes it."""
        return type(self.target).__name__.lower()

    @classmethod
    def read(cls, c: Fields, obj: Any, name: str) -> TargetEntry:
        t = c.value(obj, "object", name)
        kind = c.key(t, "kind", "text", name)
        if kind not in _TARGETS:
            c.fail(f"{name}.kind", f"is {kind!r}, not class, channel or direction")
        label = c.key(t, "label", "text", name, optional=True, default="")
        try:
            return cls(_TARGETS[kind](c, t, name), label)
        except VitalError as e:  # a value the target itself refuses (a zero direction, a negative channel)
            c.fail(name, str(e))

    def as_json(self) -> dict[str, Any]:
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.target).items()}
        return {"kind": self.kind, **fields, "label": self.label}


def _channel(c: Fields, t: dict, name: str) -> Channel:
    position = c.key(t, "position", "list", name, optional=True)
    if position is not None and (len(position) != 2 or not all(
            isinstance(p, int) and not isinstance(p, bool) for p in position)):
        c.fail(f"{name}.position", f"is {short(position)}, not two whole numbers")
    return Channel(c.key(t, "layer", "text", name), c.key(t, "channel", "whole number", name),
                   (position[0], position[1]) if position else None)


_TARGETS: dict[str, Callable[[Fields, dict, str], Target]] = {
    "class": lambda c, t, name: Class(c.key(t, "index", "whole number", name)),
    "channel": _channel,
    "direction": lambda c, t, name: Direction(c.key(t, "layer", "text", name),
                                              tuple(c.numbers(t.get("vector"), f"{name}.vector")),
                                              c.key(t, "name", "text", name, optional=True, default="")),
}


@dataclass
class FileEntry:
    """One reference file that was used, with the SHA-256 of its bytes when it was read."""

    file: str
    sha256: str


@dataclass
class ReferenceEntry:
    """How a target's references were chosen: `source` in words, `origin` as data (see `vital.references.images`),
    the files used and those skipped."""

    source: str
    requested: int | None
    files: list[FileEntry]
    skipped: dict[str, str] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, refs: ReferenceSet) -> ReferenceEntry:
        """The entry of a `ReferenceSet`."""
        return cls(refs.source, refs.requested, [FileEntry(f["file"], f["sha256"]) for f in refs.describe()],
                   dict(refs.skipped), refs.origin)

    @classmethod
    def from_json(cls, obj: Any, where: str = "the reference entry") -> ReferenceEntry:
        """One entry of a record's `references`, checked (and upgraded, see `legacy_origin`)."""
        return cls.read(Fields(where, DAMAGED), obj, "references")

    @classmethod
    def read(cls, c: Fields, obj: Any, name: str) -> ReferenceEntry:
        r = c.value(obj, "object", name)
        files = []
        for i, f in enumerate(c.key(r, "files", "list", name)):
            at = f"{name}.files[{i}]"
            c.value(f, "object", at)
            files.append(FileEntry(c.key(f, "file", "text", at), c.key(f, "sha256", "text", at)))
        skipped = c.key(r, "skipped", "object", name, optional=True, default={})
        out = cls(c.key(r, "source", "text", name), c.key(r, "requested", "whole number", name, optional=True),
                  files, dict(skipped))
        origin = c.key(r, "origin", "object", name, optional=True)
        out.origin = _check_origin(c, origin, f"{name}.origin") if origin else legacy_origin(out)
        return out

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "requested": self.requested,
                "files": [{"file": f.file, "sha256": f.sha256} for f in self.files], "skipped": dict(self.skipped),
                "origin": self.origin}


def _check_origin(c: Fields, origin: dict, name: str) -> dict:
    """The fields that rebuilding a reference set reads, by the origin's kind."""
    kind = c.key(origin, "kind", "text", name)
    if kind == "photo":
        for key in ("class", "n", "seed"):
            c.key(origin, key, "whole number", name)
        c.key(origin, "name", "text", name, optional=True)
    elif kind == "mined":
        c.key(origin, "store", "text", name, optional=True)
        c.key(origin, "layer", "text", name)
        c.key(origin, "channel", "whole number", name)
        c.key(origin, "ref_kind", "text", name)
        c.key(origin, "n", "whole number", name, optional=True)
    return dict(origin)


def legacy_origin(entry: ReferenceEntry) -> dict:
    """The origin of a reference entry written before records kept one, read from its strings: photo views are
    named "skimage:NAME#viewI(seed=S)", a store's source is "STORE:LAYER:CHANNEL:KIND"; anything else is files."""
    photo = PHOTO_VIEW.match(entry.files[0].file) if entry.files else None
    if photo:
        from vital.references.photos import OFFLINE_PHOTOS

        cls = next((k for k, v in OFFLINE_PHOTOS.items() if v == photo["name"]), None)
        return {"kind": "photo", "class": cls, "name": photo["name"], "n": len(entry.files),
                "seed": int(photo["seed"])}
    parts = entry.source.rsplit(":", 3)
    if len(parts) == 4 and parts[2].isdigit() and (Path(parts[0]) / "index.json").is_file():
        return {"kind": "mined", "store": parts[0], "layer": parts[1], "channel": int(parts[2]),
                "ref_kind": parts[3], "n": len(entry.files)}
    return {"kind": "files"}


@dataclass
class Output:
    """One image a run wrote: its file, transparency map and reference thumbnails (names inside the run folder)."""

    target: str
    target_index: int
    copy: int
    label: str
    image: str
    transparency: str | None = None
    reference_thumbnails: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, c: Fields, obj: Any, i: int) -> Output:
        name = f"outputs[{i}]"
        o = c.value(obj, "object", name)
        thumbs = c.key(o, "reference_thumbnails", "list", name, optional=True, default=[])
        for j, t in enumerate(thumbs):
            c.value(t, "text", f"{name}.reference_thumbnails[{j}]")
        return cls(c.key(o, "target", "text", name, optional=True, default=""),
                   c.key(o, "target_index", "whole number", name, optional=True, default=i),
                   c.key(o, "copy", "whole number", name, optional=True, default=0),
                   c.key(o, "label", "text", name, optional=True, default=""),
                   c.key(o, "image", "text", name), c.key(o, "transparency", "text", name, optional=True),
                   list(thumbs))

    def as_json(self) -> dict[str, Any]:
        return {"target": self.target, "target_index": self.target_index, "copy": self.copy, "label": self.label,
                "image": self.image, "transparency": self.transparency,
                "reference_thumbnails": list(self.reference_thumbnails)}
