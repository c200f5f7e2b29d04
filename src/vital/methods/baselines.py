"""The baselines of the paper's comparison, each a recipe over the same loop:

- `pixel`: plain activation maximisation on raw pixels (jitter, TV prior, clipping);
- `fourier`: Lucid-style, decorrelated-colour Fourier parameterization with 1/f scaling;
- `maco`: fixed natural-image magnitude spectrum, optimised phase, random crops and noise (Fel et al. 2023);
- `deepinversion`: cross-entropy of the class plus BatchNorm statistics matching plus priors (Yin et al. 2020).

All of them maximise the target directly (a class logit, or a channel's mean activation); none uses references
except MACO, which takes its magnitude spectrum from the references (or from a file) when they are given.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

from vital.errors import VitalError
from vital.features import FeatureExtractor
from vital.methods.base import Recipe, RunOptions, pixel_param, register, seed_generator
from vital.methods.vital import check_input_size, loop_settings
from vital.models.zoo import VisionModel
from vital.objectives.activation import channel_activation, class_logit, direction
from vital.objectives.batchnorm import BatchNormStats
from vital.params.fourier import FourierParam
from vital.params.maco import MacoParam, load_magnitude, maco_augment, maco_magnitude_from_images
from vital.references.images import ReferenceSet
from vital.targets import Channel, Class, Direction, Target


class ActivationObjective:
    """Negative class logit (or cross-entropy) or negative mean channel activation, per sample. When the input holds
    several augmented crops per sample (sample-major), their losses are averaged back to one per sample."""

    def __init__(self, model: VisionModel, targets: Sequence[Target], cross_entropy: bool = False,
                 extra: BatchNormStats | None = None, extra_weight: float = 0.0):
        self.model, self.targets = model, list(targets)
        self.cross_entropy, self.bn, self.bn_weight = cross_entropy, extra, extra_weight
        dev = model.device
        if all(isinstance(t, Class) for t in self.targets):
            self.kind = "class"
            self.index = torch.tensor([t.index for t in self.targets], device=dev)
        elif all(isinstance(t, Channel) for t in self.targets):
            self.kind = "channel"
            self.layers = sorted({t.layer for t in self.targets})
            self.extractor = FeatureExtractor(model.module, self.layers)
            self.index = torch.tensor([t.channel for t in self.targets], device=dev)
        elif all(isinstance(t, Direction) for t in self.targets) and len({t.layer for t in self.targets}) == 1:
            self.kind = "direction"
            self.layers = [self.targets[0].layer]
            self.extractor = FeatureExtractor(model.module, self.layers)
            self.vectors = torch.tensor([t.vector for t in self.targets], device=dev, dtype=model.dtype)
            self.index = torch.arange(len(self.targets), device=dev)  # row of `vectors` for each view
        else:
            raise VitalError("a batch must hold only Class, only Channel, or only Direction targets of one layer; "
                             "run them separately")

    def prepare(self, downsample: int) -> None:
        """Nothing on the reference side: activation objectives use no references."""

    def _per_view(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if self.kind == "class":
            logits = self.model(x)
            if self.cross_entropy:
                return F.cross_entropy(logits, index, reduction="none")
            return class_logit(logits, index)
        feats = self.extractor(x)
        if self.kind == "direction":
            act = feats[self.layers[0]]
            if act.shape[1] != self.vectors.shape[1]:
                raise VitalError(f"direction has {self.vectors.shape[1]} components but layer '{self.layers[0]}' has "
                                 f"{act.shape[1]} channels")
            return direction(act, self.vectors[index])
        losses = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for layer, rows in self._rows(x.shape[0] // len(self.targets), x.device).items():
            losses = losses.index_put((rows,), channel_activation(feats[layer][rows], index[rows]))
        return losses

    @lru_cache(maxsize=4)  # noqa: B019  (a handful of view counts per objective, which lives for one run)
    def _rows(self, views: int, device: torch.device) -> dict[str, torch.Tensor]:
        """For each layer, the rows of a (targets x views) batch whose target is in that layer."""
        rows = {layer: [i * views + v for i, t in enumerate(self.targets) if t.layer == layer for v in range(views)]
                for layer in self.layers}
        return {layer: torch.tensor(r, device=device) for layer, r in rows.items() if r}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b = len(self.targets)
        views = x.shape[0] // b
        loss = self._per_view(x, self.index.repeat_interleave(views)).view(b, views).mean(1)
        if self.bn is not None:
            loss = loss + self.bn_weight * self.bn.loss() / b  # one batch statistic, shared by the batch's samples
        return loss

    def state(self) -> dict:
        out = {"name": "activation", "kind": self.kind, "cross_entropy": self.cross_entropy}
        if self.bn is not None:
            out.update(batchnorm=self.bn.state(), batchnorm_weight=self.bn_weight)
        return out


@register("pixel")
def build_pixel(model: VisionModel, targets: Sequence[Target], references: Sequence[ReferenceSet | None],
                opts: RunOptions) -> Recipe:
    settings, clip = loop_settings(opts, {}, {"tv_l2": 1e-4, "l2": 0.0})
    return Recipe(pixel_param(model, len(targets), opts, clip), ActivationObjective(model, targets), settings)


@register("fourier")
def build_fourier(model: VisionModel, targets: Sequence[Target], references: Sequence[ReferenceSet | None],
                  opts: RunOptions) -> Recipe:
    settings, _ = loop_settings(opts, {}, {"lr": 0.05})  # Lucid's Adam step for a spectrum
    lo, hi = model.pixel_bounds()
    param = FourierParam(len(targets), model.size, lo, hi, generator=seed_generator(opts))

    def scale_jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Lucid's random scaling (0.9-1.1) on top of the loop's jitter, back to the input size."""
        s = float(torch.empty(()).uniform_(0.9, 1.1, generator=gen))
        y = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False) if s < 1 else \
            y[..., : x.shape[-2], : x.shape[-1]]

    return Recipe(param, ActivationObjective(model, targets), settings, augment=scale_jitter,
                  record={"augment": "jitter + random scale 0.9-1.1"})


MACO_CROPS = 4
MACO_CROP_SCALE = (0.4, 0.6)  # of a canvas twice the model's input size: crops near the model's native scale
MACO_NOISE = 0.05


@register("maco")
def build_maco(model: VisionModel, targets: Sequence[Target], references: Sequence[ReferenceSet | None],
               opts: RunOptions) -> Recipe:
    canvas = 2 * model.size
    magnitude_file = opts.extra.get("maco_magnitude")
    if magnitude_file:
        magnitude = load_magnitude(magnitude_file, canvas)
    else:
        sets = [r for r in references if r is not None]
        if not sets:
            raise VitalError("maco needs a magnitude spectrum: pass reference images (--refs) or a file saved with "
                             "torch.save(maco_magnitude_from_images(images, size)) as extra={'maco_magnitude': FILE}")
        pixels = torch.cat([s.load(model.transform()) for s in {id(s): s for s in sets}.values()])
        magnitude = maco_magnitude_from_images(model.denormalize(pixels).clamp(0, 1), canvas)
    settings, _ = loop_settings(opts, {}, {"jitter": 0, "lr": 0.25})  # MACO's random crops replace jitter
    lo, hi = model.pixel_bounds()
    param = MacoParam(len(targets), canvas, lo, hi, magnitude=magnitude.to(model.dtype), generator=seed_generator(opts))
    noise = MACO_NOISE * (hi - lo)
    n_crops = int(opts.extra.get("maco_crops", MACO_CROPS))

    def crops(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return maco_augment(x, gen, n_crops, model.size, crop_scale=MACO_CROP_SCALE, noise=noise)

    return Recipe(param, ActivationObjective(model, targets), settings, augment=crops,
                  record={"canvas": canvas, "crops": n_crops, "crop_scale": MACO_CROP_SCALE, "noise": MACO_NOISE,
                          "magnitude": magnitude_file or "mean amplitude spectrum of the references"})


DEEPINVERSION = {"tv_l2": 1e-4, "l2": 1e-5, "lr": 0.25, "flip": True}  # its released ImageNet recipe
DEEPINVERSION_BN_WEIGHT = 0.01


@register("deepinversion")
def build_deepinversion(model: VisionModel, targets: Sequence[Target], references: Sequence[ReferenceSet | None],
                        opts: RunOptions) -> Recipe:
    if not all(isinstance(t, Class) for t in targets):
        raise VitalError("deepinversion inverts class labels; for channels use method vital, maco, fourier or pixel")
    bn = BatchNormStats(model.module, name=model.name)
    settings, clip = loop_settings(opts, {}, DEEPINVERSION)
    check_input_size(model, settings)
    param = pixel_param(model, len(targets), opts, clip)
    bn_weight = float(opts.extra.get("bn_weight", DEEPINVERSION_BN_WEIGHT))
    objective = ActivationObjective(model, targets, cross_entropy=True, extra=bn, extra_weight=bn_weight)
    return Recipe(param, objective, settings, record={"bn_weight": bn_weight})
