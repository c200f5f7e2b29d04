"""What a method recipe receives (the user's options) and returns (what the loop needs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from vital.errors import VitalError, closest
from vital.models.zoo import VisionModel
from vital.optimize import Augment, LoopSettings, Objective
from vital.params.base import Parameterization
from vital.params.pixel import PixelParam
from vital.references.images import ReferenceSet
from vital.targets import Target


@dataclass
class RunOptions:
    """Every user-settable hyperparameter of a run; None means "the method's / preset's default"."""

    steps: int | None = None
    setting: int = 1
    seed: int = 0
    layers: Sequence[str] | None = None
    layer_weights: Sequence[float] | None = None
    tv_l2: float | None = None
    tv_l1: float | None = None
    l2: float | None = None
    feat_dist: float = 1.0
    jitter: int | None = None
    flip: bool | None = None
    lr: float | None = None
    warmup: int | None = None
    relevance: str = "lrp"
    progress: bool = True
    extra: dict = field(default_factory=dict)


@dataclass
class Recipe:
    param: Parameterization
    objective: Objective
    settings: LoopSettings
    augment: Augment | None = None
    record: dict = field(default_factory=dict)  # method-specific facts for the run record


def seed_generator(opts: RunOptions) -> torch.Generator:
    """The CPU generator every parameterization draws its initial image from: a seed gives the same image anywhere."""
    return torch.Generator().manual_seed(opts.seed)


def pixel_param(model: VisionModel, batch: int, opts: RunOptions, clip: bool) -> PixelParam:
    """Raw pixels at the model's input size, seeded, clamped to valid pixels when `clip`."""
    lo, hi = model.pixel_bounds()
    return PixelParam(batch, model.size, lo, hi, generator=seed_generator(opts), clip=clip)


Builder = Callable[[VisionModel, Sequence[Target], Sequence[ReferenceSet | None], RunOptions], Recipe]
METHODS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        METHODS[name] = fn
        return fn

    return deco


def build_recipe(method: str, model: VisionModel, targets: Sequence[Target],
                 references: Sequence[ReferenceSet | None], opts: RunOptions) -> Recipe:
    if method not in METHODS:
        raise VitalError(f"unknown method '{method}'.{closest(method, METHODS)} Methods: {', '.join(sorted(METHODS))}")
    return METHODS[method](model, targets, references, opts)
