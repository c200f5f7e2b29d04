"""The run record: what a run did (model, targets, options, references, seed, versions, timings) and what it wrote
(`outputs`), kept as the file `RECORD` in its run folder so that `vital rerun` can repeat it.

`RunRecord` is the one reader and writer of that file. A record is data from disk, perhaps edited by hand, so
`RunRecord.read` checks every field it uses and turns a wrong type or a missing key into one line naming the file
and the field; records from older versions of vital are upgraded as they are read (options from before methods
had typed options, reference entries from before origins were recorded). The JSON written is the same, key for
key and in the same order, as records have always been.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vital.errors import VitalError
from vital.outputs.fields import Fields, short
from vital.outputs.io import write_json
from vital.targets import Channel, Class, Direction, Target

RECORD = "record.json"
PHOTO_VIEW = re.compile(r"^skimage:(?P<name>[^#]+)#view\d+\(seed=(?P<seed>\d+)\)$")
LEGACY_EXTRA = {"maco_magnitude": "magnitude", "maco_crops": "crops", "bn_weight": "bn_weight"}
# Defaults of VITAL that changed after records were written, per kind of target, with the value they had before: a
# rerun uses the value the run resolved (its recipe), or this one when the record predates the option.
CHANGED_DEFAULTS: dict[str, dict[str, Any]] = {"channel": {"activation": 0.0}, "class": {"param": "pixel"}}
_DAMAGED = f"it is damaged or not a {RECORD} written by vital"


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
    """A target as recorded: its kind, its fields (those of `vital.Class`, `Channel` or `Direction`) and label."""

    kind: str
    fields: dict[str, Any]
    label: str = ""

    @classmethod
    def of(cls, target: Target, label: str) -> TargetEntry:
        from dataclasses import asdict

        return cls(type(target).__name__.lower(), asdict(target), label)

    @classmethod
    def read(cls, c: Fields, obj: Any, name: str) -> TargetEntry:
        t = c.value(obj, "object", name)
        kind = c.key(t, "kind", "text", name)
        if kind == "class":
            fields = {"index": c.key(t, "index", "whole number", name)}
        elif kind == "channel":
            position = c.key(t, "position", "list", name, optional=True)
            if position is not None and (len(position) != 2 or not all(
                    isinstance(p, int) and not isinstance(p, bool) for p in position)):
                c.fail(f"{name}.position", f"is {short(position)}, not two whole numbers")
            fields = {"layer": c.key(t, "layer", "text", name), "channel": c.key(t, "channel", "whole number", name),
                      "position": position}
        elif kind == "direction":
            fields = {"layer": c.key(t, "layer", "text", name), "vector": c.numbers(t.get("vector"), f"{name}.vector"),
                      "name": c.key(t, "name", "text", name, optional=True, default="")}
        else:
            c.fail(f"{name}.kind", f"is {kind!r}, not class, channel or direction")
        return cls(kind, fields, c.key(t, "label", "text", name, optional=True, default=""))

    def target(self) -> Target:
        f = self.fields
        if self.kind == "class":
            return Class(f["index"])
        if self.kind == "channel":
            position = f.get("position")
            return Channel(f["layer"], f["channel"], (position[0], position[1]) if position else None)
        return Direction(f["layer"], tuple(f["vector"]), f.get("name", ""))

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.fields, "label": self.label}


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
    def of(cls, refs: Any) -> ReferenceEntry:
        """The entry of a `ReferenceSet`."""
        return cls(refs.source, refs.requested, [FileEntry(f["file"], f["sha256"]) for f in refs.describe()],
                   dict(refs.skipped), refs.origin)

    @classmethod
    def from_json(cls, obj: Any, where: str = "the reference entry") -> ReferenceEntry:
        """One entry of a record's `references`, checked (and upgraded, see `legacy_origin`)."""
        return cls.read(Fields(where, _DAMAGED), obj, "references")

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


# the record's top-level keys, in the order they are written; (kind, required)
_SHAPE: dict[str, tuple[str, bool]] = {
    "method": ("text", True), "model": ("object", True), "targets": ("list", True), "options": ("object", True),
    "loop": ("object", False), "objective": ("object", False), "parameterization": ("object", False),
    "recipe": ("object", False), "references": ("list", True), "seed": ("whole number", False),
    "device": ("text", False), "versions": ("object", False), "timings": ("object", False),
    "final_loss": ("list", False), "loss_curve": ("list", False), "batch": ("object", False),
    "outputs": ("list", False), "metrics": ("object", False)}


@dataclass
class RunRecord:
    """Everything needed to judge and repeat a run (see the module docstring). `extra` keeps keys a later version
    of vital may have added, so that reading and writing a record never loses them."""

    method: str
    model: ModelEntry
    targets: list[TargetEntry]
    options: dict[str, Any]
    references: list[ReferenceEntry | None]
    loop: dict[str, Any] = field(default_factory=dict)
    objective: dict[str, Any] = field(default_factory=dict)
    parameterization: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    device: str | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    final_loss: list[float] = field(default_factory=list)
    loss_curve: list[float] = field(default_factory=list)
    batch: dict[str, Any] | None = None
    outputs: list[Output] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)

    # ---- reading and writing ------------------------------------------------------------------------------------

    @staticmethod
    def locate(path: str | os.PathLike) -> Path:
        """The record file of `path`: the file itself, or the record of the run folder it names."""
        path = Path(path)
        return path / RECORD if path.is_dir() else path

    @staticmethod
    def present(folder: str | os.PathLike) -> bool:
        """Whether `folder` holds a run record (is a run folder)."""
        return (Path(folder) / RECORD).is_file()

    @classmethod
    def read(cls, path: str | os.PathLike) -> RunRecord:
        """The record at `path` (the record file or the run folder holding it), checked and upgraded."""
        path = cls.locate(path)
        if not path.is_file():
            raise VitalError(f"no run record at {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise VitalError(f"cannot read the run record {path} ({type(e).__name__}); {_DAMAGED}") from e
        out = cls.from_json(data, str(path))
        out.path = path
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "the record") -> RunRecord:
        """A record from its JSON value (see `read`)."""
        if not isinstance(data, dict):
            raise VitalError(f"{where} is not a run record (a JSON object); give the {RECORD} written by vital")
        c = Fields(where, _DAMAGED)
        missing = [k for k, (_, required) in _SHAPE.items() if required and k not in data]
        if missing:
            raise VitalError(f"{where} lacks {', '.join(missing)}; {_DAMAGED}")
        got = {k: c.key(data, k, kind, "", optional=not required) for k, (kind, required) in _SHAPE.items()}
        targets = [TargetEntry.read(c, t, f"targets[{i}]") for i, t in enumerate(got["targets"])]
        refs = [None if r is None else ReferenceEntry.read(c, r, f"references[{i}]")
                for i, r in enumerate(got["references"])]
        if len(refs) != len(targets):
            raise VitalError(f"{where} lists {len(targets)} targets but {len(refs)} reference sets; it is damaged")
        metrics = got["metrics"]
        for image, values in (metrics or {}).items():
            c.value(values, "object", f"metrics.{image}")
            for k, v in values.items():
                if v is not None and not isinstance(v, (str, int, float)):
                    c.fail(f"metrics.{image}.{k}", f"is {type(v).__name__}, not a number or text")
        outputs = [Output.read(c, o, i) for i, o in enumerate(got["outputs"] or [])]
        for i, o in enumerate(outputs):
            if not 0 <= o.target_index < len(targets):
                c.fail(f"outputs[{i}].target_index", f"is {o.target_index}, not one of the {len(targets)} targets")
        method = got["method"]
        return cls(method, ModelEntry.read(c, got["model"]), targets,
                   upgrade_options(method, [t.kind for t in targets], got["options"]), refs,
                   got["loop"] or {}, got["objective"] or {}, got["parameterization"] or {}, got["recipe"] or {},
                   got["seed"], got["device"], got["versions"] or {}, got["timings"] or {},
                   c.numbers(got["final_loss"] or [], "final_loss"), c.numbers(got["loss_curve"] or [], "loss_curve"),
                   got["batch"], outputs, metrics, {k: v for k, v in data.items() if k not in _SHAPE})

    def as_json(self) -> dict[str, Any]:
        """The record as written to its file (keys in the order records have always had)."""
        out: dict[str, Any] = {
            "method": self.method,
            "model": {"name": self.model.name, "weights": self.model.weights, "mean": self.model.mean,
                      "std": self.model.std, "size": self.model.size, "resize": self.model.resize,
                      "interpolation": self.model.interpolation},
            "targets": [t.as_json() for t in self.targets], "options": dict(self.options), "loop": self.loop,
            "objective": self.objective, "parameterization": self.parameterization, "recipe": self.recipe,
            "references": [None if r is None else r.as_json() for r in self.references], "seed": self.seed,
            "device": self.device, "versions": self.versions, "timings": self.timings,
            "final_loss": list(self.final_loss), "loss_curve": list(self.loss_curve)}
        if self.batch is not None:
            out["batch"] = self.batch
        if self.outputs:
            out["outputs"] = [o.as_json() for o in self.outputs]
        if self.metrics is not None:
            out["metrics"] = self.metrics
        return {**out, **self.extra}

    def write(self, folder: str | os.PathLike) -> Path:
        """Write the record into the run folder `folder` (atomically)."""
        return write_json(self.as_json(), Path(folder) / RECORD)

    # ---- views --------------------------------------------------------------------------------------------------

    def select(self, i: int, loss_curve: list[float], batch: dict[str, Any]) -> RunRecord:
        """The record of target i of a batch run, as a run of its own: its target, references and final loss, its
        own `loss_curve`, and `batch` (which batch it was optimised in, and where)."""
        return replace(self, targets=[self.targets[i]], references=[self.references[i]],
                       final_loss=[self.final_loss[i]], loss_curve=list(loss_curve),
                       batch={**batch, "position": i}, outputs=[], path=None)

    def target_of(self, output: Output) -> TargetEntry:
        return self.targets[output.target_index]

    def reference_of(self, output: Output) -> ReferenceEntry | None:
        return self.references[output.target_index]

    def run_arguments(self) -> dict[str, Any]:
        """The keyword arguments of `vital.visualize` that the run used: the method and every option, with the
        defaults that have changed since pinned to the values the run resolved (`pin_changed_defaults`)."""
        options = {k: v for k, v in self.options.items() if k != "progress"}
        kinds = [t.kind for t in self.targets]
        return {"method": self.method, **pin_changed_defaults(self.method, kinds, options, self.recipe)}


def upgrade_options(method: str, kinds: list[str], options: dict) -> dict:
    """Options of a record written before methods had typed options: one bag with every method's fields (None or
    the old defaults where unused) and an `extra` dict. Keep what the method used, under today's names."""
    if "extra" not in options:
        return dict(options)
    out = {k: v for k, v in options.items() if k != "extra"}
    extra = options["extra"] if isinstance(options["extra"], dict) else {}
    out.update({LEGACY_EXTRA[k]: v for k, v in extra.items() if k in LEGACY_EXTRA})
    classes = all(k == "class" for k in kinds)
    if method != "vital" or classes:
        out.pop("relevance", None)  # recorded as "lrp" whether or not the method used it
    if method != "vital":
        for k in ("layers", "layer_weights", "feat_dist"):
            out.pop(k, None)
    elif not classes:  # a channel run before the measured defaults: the authors' form was the only one
        out.update(mask="multiply", target_weight=0.0, unweighted=0.0, param="pixel")
    return out



def pin_changed_defaults(method: str, kinds: list[str], options: dict, recipe: dict) -> dict:
    """`options` with every default that changed after the run (`CHANGED_DEFAULTS`) and that the run left at None
    replaced by the value the run resolved (its recipe), so that a rerun repeats the run."""
    if method != "vital":
        return dict(options)
    out = dict(options)
    for name, before in CHANGED_DEFAULTS["class" if all(k == "class" for k in kinds) else "channel"].items():
        if out.get(name) is None:
            out[name] = recipe.get(name, before)
    return out
