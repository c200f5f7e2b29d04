"""What a batch job asks for, read from a TOML job file and/or command-line flags.

A job is either a visualisation job (a model, many targets, a method, references, run and speed options) or a
mining job (a model, layers and an image folder, mined in shards). Everything that decides the results is in
`identity()`, which the job manifest stores so that a rerun into the same folder is known to be the same job.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from vital import validate
from vital.errors import VitalError, closest
from vital.methods import RunOptions, option_names, split_options
from vital.models.zoo import VisionModel, load_model
from vital.references.refs_rule import ReferenceSpec
from vital.run.speed import SpeedOptions
from vital.targets import Channel, Class, Target, parse_names, parse_range

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

_RUN_FIELDS = {"steps", "setting", "seed", "progress"}  # job-level, not `options`


@dataclass(frozen=True)
class ModelSpec:
    """How a worker rebuilds the model: a registered name with weights, or a factory "package.module:function"
    (returning a VisionModel or an nn.Module) that every worker can import. Never a pickled module."""

    name: str | None = None
    weights: str | None = "default"
    factory: str | None = None

    def __post_init__(self) -> None:
        for key in ("name", "weights", "factory"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise VitalError(f"{'model' if key == 'name' else key} must be text, got {value!r}")
        if (self.name is None) == (self.factory is None):
            raise VitalError("give exactly one of model (a name such as resnet50) or factory (package.module:function)")
        if self.factory is not None and ":" not in self.factory:
            raise VitalError(f"factory '{self.factory}' must read package.module:function")

    def load(self, device: str) -> VisionModel:
        """The model on `device`. A random network by name (weights None) is drawn from `load_model`'s fixed seed,
        so that every worker process builds the same one."""
        if self.name is not None:
            return load_model(self.name, self.weights, device)
        made = self.callable()()
        return load_model(made, device=device) if not isinstance(made, VisionModel) else made.to(device)

    def callable(self) -> Callable[[], Any]:
        if self.factory is None:
            raise VitalError("this model spec names no factory (module:function)")
        module, _, attr = self.factory.partition(":")
        try:
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise VitalError(f"cannot import model factory '{self.factory}' ({e}); put its module on PYTHONPATH") from e
        if not callable(obj):
            raise VitalError(f"model factory '{self.factory}' is not callable; name a function that returns a model")
        return obj

    def import_root(self) -> str | None:
        """The sys.path folder the factory's module is imported from (shipped to Ray workers), if any."""
        if self.factory is None:
            return None
        module = self.factory.partition(":")[0]
        path = Path(getattr(sys.modules.get(module) or importlib.import_module(module), "__file__", "") or "")
        if not path.name:
            return None
        depth = module.count(".") + (1 if path.name == "__init__.py" else 0)
        return str(path.resolve().parents[depth])


References = ReferenceSpec  # the job file's [references] section


@dataclass(frozen=True)
class Job:
    """A visualisation job: every target is run with the same model, method, references rule and options."""

    model: ModelSpec
    targets: tuple[Target, ...]
    method: str = "vital"
    steps: int | None = None
    setting: int = 1
    seed: int = 0
    references: References = References()
    options: Mapping[str, Any] = field(default_factory=dict)
    speed: SpeedOptions = SpeedOptions()
    device: str | None = None
    batch_size: int | None = None  # None: sized to the device (see vital.jobs.work.batch_size_for)

    def __post_init__(self) -> None:
        if not self.targets:
            raise VitalError("the job has no targets; give --classes or --layer with --channels")
        if len(set(self.targets)) != len(self.targets):
            raise VitalError("the job lists a target twice; give each class or channel once")
        valid = set(option_names(self.method)) - _RUN_FIELDS  # the loop's options and the method's own
        bad = set(self.options) - valid
        if bad:
            raise VitalError(f"unknown option(s) {sorted(bad)} in [options] for method {self.method}; valid: "
                             f"{sorted(valid)}")
        validate.integer("batch_size", self.batch_size, low=1)
        if not isinstance(self.options, Mapping):
            raise VitalError(f"[options] must be a table of option = value, got {self.options!r}")
        # every value is checked now, by the same option classes a run uses, before anything is written to --out
        run_kwargs, _ = split_options(self.method, dict(self.options))
        RunOptions(steps=self.steps, setting=self.setting, seed=self.seed, **run_kwargs)
        if self.device is not None and not isinstance(self.device, str):
            raise VitalError(f"device must be a name such as cpu or cuda, got {self.device!r}")

    def identity(self) -> dict[str, Any]:
        """Everything that decides the results (not the device, batch size being fixed per output folder)."""
        return {"model": asdict(self.model), "targets": [str(t) for t in self.targets], "method": self.method,
                "steps": self.steps, "setting": self.setting, "seed": self.seed,
                "references": asdict(self.references), "options": dict(self.options), "speed": asdict(self.speed)}


@dataclass(frozen=True)
class MineJob:
    """A mining job: `layers` of the model over an image folder, in `shards` contiguous parts merged at the end."""

    model: ModelSpec
    layers: tuple[str, ...]
    images: str
    k: int = 50
    n_images: int | None = None
    batch_size: int = 32
    shards: int = 1
    device: str | None = None

    def __post_init__(self) -> None:
        if not self.layers:
            raise VitalError("no layers to mine; give --mine LAYER[,LAYER...]")
        validate.names("layers", self.layers)
        if not isinstance(self.images, str) or not self.images:
            raise VitalError(f"images must be a folder path, got {self.images!r}")
        validate.integer("k", self.k, low=1, optional=False)
        validate.integer("n_images", self.n_images, low=1)
        validate.integer("shards", self.shards, low=1, optional=False)
        validate.integer("batch_size", self.batch_size, low=1, optional=False)


def _targets(spec: Mapping[str, Any]) -> tuple[Target, ...]:
    unknown = set(spec) - {"classes", "layer", "channels"}
    if unknown:
        raise VitalError(f"unknown key(s) {sorted(unknown)} in [targets]; use classes, layer, channels")

    def indices(value) -> list[int]:
        if isinstance(value, str):
            return parse_range(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise VitalError(f"[targets] indices must be a range such as '0-9' or a list of whole numbers, got "
                             f"{value!r}")
        return list(value)

    out: list[Target] = [Class(k) for k in indices(spec.get("classes", []))]
    if "channels" in spec:
        if not spec.get("layer") or not isinstance(spec["layer"], str):
            raise VitalError("channels need a layer name (--layer layer4.2 --channels 0-2047)")
        out += [Channel(spec["layer"], c) for c in indices(spec["channels"])]
    elif "layer" in spec:
        raise VitalError(f"layer '{spec['layer']}' is given without channels; add --channels 0-N")
    return tuple(out)


_TOP_KEYS = {"model", "weights", "factory", "method", "steps", "setting", "seed", "device", "batch_size",
             "targets", "references", "options", "speed", "mine"}


def _section(d: Any, cls, name: str):
    if not isinstance(d, Mapping):
        raise VitalError(f"[{name}] must be a table of key = value, got {d!r}")
    valid = {f.name for f in fields(cls)}
    unknown = set(d) - valid
    if unknown:
        key = sorted(unknown)[0]
        raise VitalError(f"unknown key '{key}' in [{name}].{closest(key, valid)} Valid: {', '.join(sorted(valid))}")
    return cls(**d)


def job_from_dict(d: Mapping[str, Any]) -> Job | MineJob:
    """A `Job` (or a `MineJob` when there is a [mine] section) from a parsed job file merged with flags. Every
    value is checked here, before anything is written."""
    try:
        return _job_from_dict(d)
    except TypeError as e:  # a value of the wrong kind that reached a constructor
        raise VitalError(f"the job has a value of the wrong type ({e}); see `vital batch --help` for each key") from e


def _job_from_dict(d: Mapping[str, Any]) -> Job | MineJob:
    unknown = set(d) - _TOP_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise VitalError(f"unknown key '{key}' in the job file.{closest(key, _TOP_KEYS)}")
    weights = d.get("weights", "default")
    model = ModelSpec(d.get("model"), None if str(weights).lower() == "none" else weights, d.get("factory"))
    if "mine" in d:
        mine = dict(d["mine"])
        if "layers" in mine and isinstance(mine["layers"], str):
            mine["layers"] = parse_names(mine["layers"])
        mine["layers"] = tuple(mine.get("layers", ()))
        return _section({**mine, "model": model, "device": d.get("device")}, MineJob, "mine")
    return Job(model=model, targets=_targets(d.get("targets", {})), method=d.get("method", "vital"),
               steps=d.get("steps"), setting=d.get("setting", 1), seed=d.get("seed", 0),
               references=_section(d.get("references", {}), References, "references"),
               options=dict(d.get("options", {})), speed=_section(d.get("speed", {}), SpeedOptions, "speed"),
               device=d.get("device"), batch_size=d.get("batch_size"))


def read_job_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise VitalError(f"job file {path} does not exist") from e
    except IsADirectoryError as e:
        raise VitalError(f"job file {path} is a folder; give the TOML file") from e
    except UnicodeDecodeError as e:
        raise VitalError(f"job file {path} is not UTF-8 text; save it as UTF-8 TOML") from e
    except OSError as e:
        raise VitalError(f"cannot read job file {path} ({e.strerror or type(e).__name__})") from e
    except tomllib.TOMLDecodeError as e:
        raise VitalError(f"job file {path} is not valid TOML: {e}") from e


def preflight(job: Job | MineJob) -> None:
    """Check everything a job needs that the file alone cannot tell, before any target starts or the output folder
    is made: the model and its weights load, every layer exists and runs, every channel is within its layer, the
    references (or the images to mine) are there. A mistake is one `VitalError`, not a batch of failed targets."""
    from vital.features import resolve_modules
    from vital.validate import targets_fit

    model = job.model.load("cpu")  # the driver's copy, only to check; workers load their own on their device
    if isinstance(job, MineJob):
        resolve_modules(model.module, job.layers)
        if not Path(job.images).exists():
            raise VitalError(f"images to mine: {job.images} does not exist")
        return
    targets_fit(model, job.targets)
    refs = job.references
    if refs.source in ("folder", "class-folder", "store") and not Path(str(refs.path)).is_dir():
        raise VitalError(f"references folder {refs.path} does not exist; fix [references] path (or --refs)")
    if refs.source != "store":
        refs.resolve(job.targets, seed=job.seed)  # every class finds its folder (file listings only)
        return
    from vital.references.mining import MiningStore

    store = MiningStore.load(str(refs.path))  # mined for this model, with every target's layer
    for layer in sorted({t.layer for t in job.targets if isinstance(t, Channel)}):
        store.check(model, layer, None)
