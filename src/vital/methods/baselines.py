"""The baselines of the paper's comparison, each a recipe over the same loop:

- `pixel`: plain activation maximisation on raw pixels (jitter, TV prior, clipping);
- `fourier`: Lucid-style, decorrelated-colour Fourier parameterization with 1/f scaling and random scaling;
- `maco`: fixed natural-image magnitude spectrum, optimised phase, random crops and noise (Fel et al. 2023);
- `deepinversion`: cross-entropy of the class plus BatchNorm statistics matching plus priors (Yin et al. 2020).

All of them maximise the target directly (a class logit, a channel's mean activation, or a direction); none uses
references except MACO, which takes its magnitude spectrum from the references (or from a file) when given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vital import validate
from vital.errors import VitalError
from vital.methods.base import (
    Recipe,
    RunOptions,
    check_input_size,
    loop_settings,
    pixel_param,
    register,
    seed_generator,
)
from vital.methods.history import OptionHistory
from vital.models.zoo import VisionModel
from vital.objectives.activation import Activation
from vital.objectives.base import Sum
from vital.objectives.batchnorm import BatchNormStats
from vital.params.fourier import FourierParam
from vital.params.maco import MacoParam, load_magnitude, maco_magnitude_from_images
from vital.references.images import ReferenceSet
from vital.run.transforms import crops_with_noise, random_scale
from vital.targets import Class, Target


@register("pixel")
def build_pixel(model: VisionModel, targets: Sequence[Target], references: Sequence[ReferenceSet | None],
                run: RunOptions, opts: object) -> Recipe:
    settings, clip, priors = loop_settings(run, {"tv_l2": 1e-4, "l2": 0.0})
    return Recipe(pixel_param(model, len(targets), run, clip), priors + Activation(model, targets), settings)


@register("fourier")
def build_fourier(model: VisionModel, targets: Sequence[Target], references: Sequence[ReferenceSet | None],
                  run: RunOptions, opts: object) -> Recipe:
    settings, _, priors = loop_settings(run, {"lr": 0.05})  # Lucid's Adam step for a spectrum
    lo, hi = model.pixel_bounds()
    param = FourierParam(len(targets), model.size, lo, hi, generator=seed_generator(run))
    return Recipe(param, priors + Activation(model, targets), settings, augment=random_scale,
                  resolved={"augment": "jitter + random scale 0.9-1.1"})


MACO_CROPS = 4
MACO_CROP_SCALE = (0.4, 0.6)  # of a canvas twice the model's input size: crops near the model's native scale
MACO_NOISE = 0.05


@dataclass
class MacoOptions:
    """magnitude: a file saved with torch.save(maco_magnitude_from_images(images, size)) (default: the mean
    amplitude spectrum of the references); crops: random crops per image and step."""

    magnitude: str | None = None
    crops: int = MACO_CROPS

    def __post_init__(self) -> None:
        validate.integer("crops", self.crops, low=1, optional=False)
        if self.magnitude is not None and not isinstance(self.magnitude, str):
            raise VitalError(f"magnitude must be a file path, got {self.magnitude!r}")


@register("maco", MacoOptions,
          history=OptionHistory(legacy_extra={"maco_magnitude": "magnitude", "maco_crops": "crops"}))
def build_maco(model: VisionModel, targets: Sequence[Target], references: Sequence[ReferenceSet | None],
               run: RunOptions, opts: MacoOptions) -> Recipe:
    canvas = 2 * model.size
    if opts.magnitude:
        magnitude = load_magnitude(opts.magnitude, canvas)
    else:
        sets = [r for r in references if r is not None]
        if not sets:
            raise VitalError("maco needs a magnitude spectrum: pass reference images (--refs) or a file saved with "
                             "torch.save(maco_magnitude_from_images(images, size)) as magnitude=FILE")
        pixels = torch.cat([s.load(model.transform()) for s in {id(s): s for s in sets}.values()])
        magnitude = maco_magnitude_from_images(model.denormalize(pixels).clamp(0, 1), canvas)
    settings, _, priors = loop_settings(run, {"jitter": 0, "lr": 0.25})  # MACO's random crops replace jitter
    lo, hi = model.pixel_bounds()
    param = MacoParam(len(targets), canvas, lo, hi, magnitude=magnitude.to(model.dtype), generator=seed_generator(run))
    noise = MACO_NOISE * (hi - lo)
    n_crops = int(opts.crops)

    def crops(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return crops_with_noise(x, gen, n_crops, model.size, crop_scale=MACO_CROP_SCALE, noise=noise)

    return Recipe(param, priors + Activation(model, targets), settings, augment=crops,
                  resolved={"canvas": canvas, "crops": n_crops, "crop_scale": MACO_CROP_SCALE, "noise": MACO_NOISE,
                          "magnitude": opts.magnitude or "mean amplitude spectrum of the references"})


DEEPINVERSION = {"tv_l2": 1e-4, "l2": 1e-5, "lr": 0.25, "flip": True}  # its released ImageNet recipe
DEEPINVERSION_BN_WEIGHT = 0.01


@dataclass
class DeepInversionOptions:
    """bn_weight: weight of the BatchNorm statistics term."""

    bn_weight: float = DEEPINVERSION_BN_WEIGHT

    def __post_init__(self) -> None:
        validate.number("bn_weight", self.bn_weight, low=0, optional=False)


@register("deepinversion", DeepInversionOptions, couples_batch=True,
          history=OptionHistory(legacy_extra={"bn_weight": "bn_weight"}))
def build_deepinversion(model: VisionModel, targets: Sequence[Target], references: Sequence[ReferenceSet | None],
                        run: RunOptions, opts: DeepInversionOptions) -> Recipe:
    if not all(isinstance(t, Class) for t in targets):
        raise VitalError("deepinversion inverts class labels; for channels use method vital, maco, fourier or pixel")
    bn = BatchNormStats(model.module, name=model.name, weight=float(opts.bn_weight))
    settings, clip, priors = loop_settings(run, DEEPINVERSION)
    check_input_size(model, settings)
    param = pixel_param(model, len(targets), run, clip)
    # the statistics term is added to the class term before the priors, as DeepInversion sums them
    objective = Sum([priors, Sum([Activation(model, targets, cross_entropy=True), bn])])
    return Recipe(param, objective, settings, resolved={"bn_weight": float(opts.bn_weight)})
