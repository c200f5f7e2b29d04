"""What a method recipe receives (the loop options and its own typed options) and returns (what the loop needs).

A method is registered with its options dataclass: `visualize(..., **options)` splits the keyword options into the
loop's (`RunOptions`, shared by every method) and the method's own, and an option that neither knows is an error
that lists the valid ones. None always means "the method's or the preset's default".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import torch

from vital import validate
from vital.errors import VitalError, closest
from vital.methods.history import GROUPS, OptionHistory
from vital.models.zoo import VisionModel
from vital.objectives.base import Term
from vital.objectives.priors import Priors
from vital.params.base import Parameterization
from vital.params.pixel import PixelParam
from vital.references.images import ReferenceSet
from vital.run.loop import LoopSettings, setting
from vital.run.transforms import Augment
from vital.targets import Target


@dataclass
class RunOptions:
    """The loop's options, shared by every method; None means "the method's default"."""

    steps: int | None = None
    setting: int = 1
    seed: int = 0
    tv_l2: float | None = None
    tv_l1: float | None = None
    l2: float | None = None
    jitter: int | None = None
    flip: bool | None = None
    lr: float | None = None
    warmup: int | None = None
    progress: bool = True
    copies: int = 1  # images per target, optimised together
    diversity: float = 0.0  # weight of the diversity term among a target's copies (vital.objectives.diversity)
    diversity_layer: str | None = None  # default: the target's layer, or the deepest matched layer for classes

    def __post_init__(self) -> None:
        validate.integer("steps", self.steps, low=1)
        validate.integer("setting", self.setting, low=0, high=2, optional=False)
        validate.integer("seed", self.seed, low=0, high=2**63 - 1, optional=False)
        for name in ("tv_l2", "tv_l1", "l2"):
            validate.number(name, getattr(self, name), low=0)
        validate.integer("jitter", self.jitter, low=0)
        validate.flag("flip", self.flip)
        validate.number("lr", self.lr, high=validate.LR_MAX, positive=True)
        validate.integer("warmup", self.warmup, low=0)
        validate.flag("progress", self.progress)
        validate.integer("copies", self.copies, low=1, high=64, optional=False)
        validate.number("diversity", self.diversity, low=0, optional=False)
        if self.diversity and self.copies < 2:
            raise VitalError("the diversity term compares several images of one target: give copies >= 2")
        if self.diversity_layer is not None and not isinstance(self.diversity_layer, str):
            raise VitalError(f"diversity_layer must be a layer name, got {self.diversity_layer!r}")


@dataclass
class Recipe:
    """A method's parts for one batch: the loop runs `objective` on `param`'s images. Enter it (`with recipe:`) for
    the objective to attach to the model; leaving restores the model exactly."""

    param: Parameterization
    objective: Term
    settings: LoopSettings
    augment: Augment | None = None
    resolved: dict = field(default_factory=dict)  # what the method resolved (its defaults): the record's "recipe"

    def __enter__(self) -> Recipe:
        self.objective.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.objective.__exit__(*exc)


RecipeBuilder = Callable[[VisionModel, Sequence[Target], Sequence[ReferenceSet | None], RunOptions, Any], Recipe]


NO_HISTORY = OptionHistory()  # a method whose defaults never changed


@dataclass(frozen=True)
class Method:
    """A registered recipe. `couples_batch`: its loss mixes the samples of a batch (a batch statistic), so each
    target must run alone to get the image it would get alone."""

    name: str
    build: RecipeBuilder
    options: type
    couples_batch: bool = False
    history: OptionHistory = NO_HISTORY


METHODS: dict[str, Method] = {}


@dataclass
class NoOptions:
    """A method without options of its own."""


def register(name: str, options: type = NoOptions, couples_batch: bool = False,
             history: OptionHistory = NO_HISTORY) -> Callable[[RecipeBuilder], RecipeBuilder]:
    def deco(fn: RecipeBuilder) -> RecipeBuilder:
        METHODS[name] = Method(name, fn, options, couples_batch, history)
        return fn

    return deco


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise VitalError(f"unknown method '{name}'.{closest(name, METHODS)} Methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def option_names(method: str) -> list[str]:
    """Every option `visualize(..., method=method)` accepts besides model, targets and references."""
    return sorted([f.name for f in fields(RunOptions)] + [f.name for f in fields(get_method(method).options)])


def option_defaults(method: str) -> dict[str, dict[str, Any]]:
    """{group: {option: default}} of a method's own options, for a run of classes and of channels: the declared
    defaults (`OptionHistory.defaults`), else the field's own when it has one; an option without either (the
    preset's layers, say) is left out."""
    spec = get_method(method)
    own = {f.name: f.default for f in fields(spec.options) if f.default is not None and f.default is not MISSING}
    return {g: {**own, **spec.history.defaults.get(g, {})} for g in GROUPS}


def upgrade_options(method: str, kinds: Sequence[str], options: dict[str, Any]) -> dict[str, Any]:
    """A recorded run's options as today's `visualize` takes them (see `OptionHistory.upgrade`); a method that is
    not registered keeps them as they are."""
    spec = METHODS.get(method)
    return spec.history.upgrade(option_names(method), kinds, options) if spec else dict(options)


def pin_changed_defaults(method: str, kinds: Sequence[str], options: dict[str, Any],
                         recipe: dict[str, Any]) -> dict[str, Any]:
    """A recorded run's options with the defaults that changed since pinned (see `OptionHistory.pin`)."""
    spec = METHODS.get(method)
    return spec.history.pin(kinds, options, recipe) if spec else dict(options)


def split_options(method: str, options: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """(RunOptions keyword arguments, the method's options object). None values count as not given; an option the
    method does not know is an error that lists the ones it knows."""
    spec = get_method(method)
    run_names = {f.name for f in fields(RunOptions)}
    own_names = {f.name for f in fields(spec.options)}
    unknown = sorted(k for k, v in options.items() if k not in run_names | own_names and v is not None)
    if unknown:
        raise VitalError(f"method '{method}' has no option(s) {unknown}; valid: {', '.join(option_names(method))}")
    run = {k: v for k, v in options.items() if k in run_names}
    own = spec.options(**{k: v for k, v in options.items() if k in own_names and v is not None})
    return run, own


def build_recipe(method: str, model: VisionModel, targets: Sequence[Target],
                 references: Sequence[ReferenceSet | None], run: RunOptions, options: Any = None) -> Recipe:
    spec = get_method(method)
    return spec.build(model, targets, references, run, options if options is not None else spec.options())


# ---- shared by the recipes ---------------------------------------------------------------------------------------

LOOP_DEFAULTS = {"lr": 1.0, "jitter": 30, "flip": False, "warmup": 100}  # the authors' defaults (arXiv 2503.22399, experiments section)
PRIOR_NAMES = ("tv_l2", "tv_l1", "l2")


def loop_settings(run: RunOptions, defaults: dict | None = None) -> tuple[LoopSettings, bool, Priors]:
    """The loop and the priors of a run: the user's options, else the method's `defaults`, else the paper's loop
    defaults (no priors). Returns (settings, clip, priors)."""
    merged: dict[str, Any] = {**LOOP_DEFAULTS, "tv_l2": 0.0, "tv_l1": 0.0, "l2": 0.0, **(defaults or {})}

    def pick(name: str):
        v = getattr(run, name)
        return merged[name] if v is None else v

    st = setting(run.setting, run.steps)
    ls = LoopSettings(stages=st["stages"], lr=float(pick("lr")), betas=st["betas"], warmup=int(pick("warmup")),
                      jitter=int(pick("jitter")), flip=bool(pick("flip")), seed=run.seed, progress=run.progress)
    return ls, st["clip"], Priors(*(float(pick(n)) for n in PRIOR_NAMES))


def check_input_size(model: VisionModel, settings: LoopSettings) -> None:
    """Fail early, with the fix, when the model cannot take a stage's input size (e.g. a ViT at 112 px)."""
    for stage in settings.stages:
        size = model.size // stage.downsample
        if stage.downsample == 1:
            continue
        try:
            with torch.no_grad():
                model.module(torch.zeros(1, 3, size, size, device=model.device, dtype=model.dtype))
        except Exception as e:
            raise VitalError(f"{model.name} cannot take {size}px input, which setting 0 needs for its first stage "
                             f"({type(e).__name__}); use --setting 1") from e


def seed_generator(run: RunOptions) -> torch.Generator:
    """The CPU generator every parameterization draws its initial image from: a seed gives the same image anywhere."""
    return torch.Generator(device="cpu").manual_seed(run.seed)


def pixel_param(model: VisionModel, batch: int, run: RunOptions, clip: bool, std: float = 1.0) -> PixelParam:
    """Raw pixels at the model's input size, N(0, std^2) in input space, seeded, clamped to valid pixels when
    `clip`."""
    lo, hi = model.pixel_bounds()
    init = None if std == 1.0 else std * torch.randn(batch, 3, model.size, model.size, generator=seed_generator(run))
    return PixelParam(batch, model.size, lo, hi, generator=seed_generator(run), clip=clip, init=init)
