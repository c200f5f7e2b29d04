"""VITAL: sort-matching of intermediate feature distributions against real references, pixel parameterization."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vital.errors import VitalError
from vital.features import FeatureExtractor
from vital.methods.base import Recipe, RunOptions, pixel_param, register
from vital.models.presets import preset_for
from vital.models.zoo import VisionModel
from vital.objectives.sort_matching import PrototypeAccumulator, sort_matching_loss
from vital.optimize import LoopSettings, setting
from vital.references.images import ReferenceSet
from vital.targets import Class, Direction, Target


class ReferencePixels:
    """Each distinct reference set loaded once with the model's preprocessing, kept on the model's device."""

    def __init__(self, model: VisionModel, sets: Sequence[ReferenceSet]):
        self.model = model
        self.sets = list(sets)
        self.index = [next(i for i, t in enumerate(self.sets) if t is s) for s in self.sets]
        self._cache: dict[int, torch.Tensor] = {}

    def unique(self) -> list[int]:
        return sorted(set(self.index))

    def pixels(self, i: int) -> torch.Tensor:
        if i not in self._cache:
            t = self.sets[i].load(self.model.transform())
            self._cache[i] = t.to(self.model.device, self.model.dtype)
        return self._cache[i]


class SortMatchingObjective:
    """sum_l w_l * sort-matching(features_l(x_b), prototype_l of sample b's references), per sample b."""

    def __init__(self, model: VisionModel, layers: Sequence[str], weights: Sequence[float],
                 references: Sequence[ReferenceSet], feat_dist: float = 1.0, chunk: int = 16):
        if len(weights) != len(layers):
            raise VitalError(f"{len(layers)} layers but {len(weights)} layer weights; give one weight per layer")
        self.model = model
        self.layers = list(layers)
        self.weights = [float(w) * feat_dist for w in weights]
        self.refs = ReferencePixels(model, references)
        self.extractor = FeatureExtractor(model.module, self.layers)
        self.chunk = chunk
        self.q: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def prepare(self, downsample: int) -> None:
        protos: dict[int, dict[str, torch.Tensor]] = {}
        for i in self.refs.unique():
            accs = {name: PrototypeAccumulator() for name in self.layers}
            pixels = self.refs.pixels(i)
            for start in range(0, pixels.shape[0], self.chunk):
                x = pixels[start:start + self.chunk]
                if downsample > 1:
                    x = F.avg_pool2d(x, downsample)  # exactly what the network sees of the synthetic image
                for name, f in self.extractor(x).items():
                    accs[name].add(f)
            protos[i] = {name: a.prototype() for name, a in accs.items()}
        self.q = {name: torch.stack([protos[i][name] for i in self.refs.index]) for name in self.layers}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.extractor(x)
        return sum(w * sort_matching_loss(feats[n], self.q[n]) for n, w in zip(self.layers, self.weights, strict=True))

    def state(self) -> dict:
        return {"name": "sort_matching", "layers": self.layers, "layer_weights": self.weights}


def resolve_layers(model: VisionModel, opts: RunOptions) -> tuple[list[str], list[float], dict]:
    """Matched layers and weights: the user's, else the preset's; plus the preset's priors."""
    preset = preset_for(model.name, model.module, model.size)
    layers = list(opts.layers) if opts.layers else list(preset.layers or ())
    if not layers:
        raise VitalError(f"no layers to match for {model.name}: pass --layers (see `vital layers {model.name}`)")
    if opts.layer_weights:
        weights = list(opts.layer_weights)
    elif opts.layers:
        weights = [1.0] * len(layers)
    else:
        weights = list(preset.layer_weights or [1.0] * len(layers))
    priors = {"tv_l2": preset.tv_l2, "l2": preset.l2, "tv_l1": preset.tv_l1}
    return layers, weights, priors


LOOP_DEFAULTS = {"lr": 1.0, "jitter": 30, "flip": False, "warmup": 100}  # SPEC section 8


def loop_settings(opts: RunOptions, priors: dict, defaults: dict | None = None) -> tuple[LoopSettings, bool]:
    """The loop for a run: the user's options, else the method's `defaults`, else the preset's `priors`, else the
    paper's loop defaults. Returns (settings, clip)."""
    merged = {**LOOP_DEFAULTS, "tv_l2": 0.0, "tv_l1": 0.0, "l2": 0.0, **priors, **(defaults or {})}

    def pick(name: str):
        v = getattr(opts, name)
        return merged[name] if v is None else v

    st = setting(opts.setting, opts.steps)
    ls = LoopSettings(stages=st["stages"], lr=float(pick("lr")), betas=st["betas"], warmup=int(pick("warmup")),
                      jitter=int(pick("jitter")), flip=bool(pick("flip")), tv_l2=float(pick("tv_l2")),
                      tv_l1=float(pick("tv_l1")), l2=float(pick("l2")), seed=opts.seed, progress=opts.progress)
    return ls, st["clip"]


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


@register("vital")
def build(model: VisionModel, targets: Sequence[Target], references: Sequence[ReferenceSet | None],
          opts: RunOptions) -> Recipe:
    if any(isinstance(t, Direction) for t in targets):
        raise VitalError("VITAL aligns distributions for classes and channels; visualise a direction with method "
                         "pixel, fourier or maco")
    if not all(isinstance(t, Class) for t in targets):
        from vital.methods.vital_neuron import build_neuron

        return build_neuron(model, targets, references, opts)
    if any(r is None for r in references):
        raise VitalError("VITAL needs reference images for every class: pass --refs DIR (ImageNet train layout or "
                         "a folder of images of the class)")
    layers, weights, priors = resolve_layers(model, opts)
    settings, clip = loop_settings(opts, priors)
    check_input_size(model, settings)
    objective = SortMatchingObjective(model, layers, weights, references, opts.feat_dist)
    return Recipe(pixel_param(model, len(targets), opts, clip), objective, settings)
