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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vital.errors import VitalError
from vital.outputs.entries import DAMAGED, RECORD, ModelEntry, Output, ReferenceEntry, TargetEntry
from vital.outputs.fields import Fields
from vital.outputs.io import write_json

__all__ = ["RECORD", "ModelEntry", "Output", "ReferenceEntry", "RunRecord", "TargetEntry"]


# the record's top-level keys, in the order they are written; (kind, required)
_SHAPE: dict[str, tuple[str, bool]] = {
    "method": ("text", True), "model": ("object", True), "targets": ("list", True), "options": ("object", True),
    "loop": ("object", False), "objective": ("object", False), "parameterization": ("object", False),
    "recipe": ("object", False), "references": ("list", True), "seed": ("whole number", False),
    "device": ("text", False), "versions": ("object", False), "timings": ("object", False),
    "final_loss": ("list", False), "loss_curve": ("list", False), "batch": ("object", False),
    "outputs": ("list", False), "metrics": ("object", False)}


@dataclass(kw_only=True)
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
            raise VitalError(f"cannot read the run record {path} ({type(e).__name__}); {DAMAGED}") from e
        out = cls.from_json(data, str(path))
        out.path = path
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "the record") -> RunRecord:
        """A record from its JSON value (see `read`)."""
        if not isinstance(data, dict):
            raise VitalError(f"{where} is not a run record (a JSON object); give the {RECORD} written by vital")
        c = Fields(where, DAMAGED)
        missing = [k for k, (_, required) in _SHAPE.items() if required and k not in data]
        if missing:
            raise VitalError(f"{where} lacks {', '.join(missing)}; {DAMAGED}")
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
        from vital.methods import upgrade_options

        method = got["method"]
        return cls(method=method, model=ModelEntry.read(c, got["model"]), targets=targets,
                   options=upgrade_options(method, [t.kind for t in targets], got["options"]), references=refs,
                   loop=got["loop"] or {}, objective=got["objective"] or {},
                   parameterization=got["parameterization"] or {}, recipe=got["recipe"] or {}, seed=got["seed"],
                   device=got["device"], versions=got["versions"] or {}, timings=got["timings"] or {},
                   final_loss=c.numbers(got["final_loss"] or [], "final_loss"),
                   loss_curve=c.numbers(got["loss_curve"] or [], "loss_curve"), batch=got["batch"],
                   outputs=outputs, metrics=metrics, extra={k: v for k, v in data.items() if k not in _SHAPE})

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
        defaults that have changed since pinned to the values the run resolved (each method's own history:
        `vital.methods.history`)."""
        from vital.methods import pin_changed_defaults

        options = {k: v for k, v in self.options.items() if k != "progress"}
        kinds = [t.kind for t in self.targets]
        return {"method": self.method, **pin_changed_defaults(self.method, kinds, options, self.recipe)}
