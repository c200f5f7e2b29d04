"""VITAL: align the image's intermediate feature distributions with real references (`objectives.Alignment`).

Classes: plain sort-matching of the preset's layers against the class's reference images, on the decorrelated
Fourier image (the paper's raw pixels with `param="pixel"`).
Channels: the preset's layers upstream of the target, weighted by the target's relevance, as much plain alignment
beside it, and the target unit's mean activation read from the same forward; the defaults for channels are the
measured ones of bench/quality_neuron.py on photos the optimisation never saw (see NEURON_DEFAULTS), and
`relevance="lrp", mask="multiply", target_weight=0, unweighted=0, activation=0, param="pixel"` is the authors' code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vital import validate
from vital.errors import VitalError
from vital.features import LayerRow, layer_table, resolve_modules, upstream_of
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
from vital.objectives.alignment import MASK_RULES, RELEVANCE_METHODS, Alignment
from vital.objectives.sliced import SlicedAlignment
from vital.params.base import Parameterization
from vital.params.fourier import FourierParam
from vital.references.images import ReferenceSet
from vital.relevance import readout
from vital.relevance.readout import Readout
from vital.relevance.rule_maps import DEFAULT_PRESET, resolve_rules
from vital.run.transforms import scale_rotate
from vital.targets import Channel, Class, Direction, Target

PARAMS = ("pixel", "fourier")
AUGMENTS = ("none", "scale-rotate")


@dataclass
class VitalOptions:
    """VITAL's own options; None means the default for the kind of target (class or channel).

    | option | classes | channels | what it sets |
    |---|---|---|---|
    | layers | preset | preset | the matched layers |
    | layer_weights | preset | preset | one weight per matched layer |
    | feat_dist | 1 | 1 | a factor on every layer weight |
    | relevance | - | lrp | the target's relevance that weights the alignment: lrp, lrp-restricted, guided-backprop, none |
    | mask | - | reference | reference: the references' relevance-weighted distributions; multiply: the authors' per-step masks |
    | target_weight | - | 0 | weight of matching the target channel's own distribution |
    | unweighted | - | 1 | weight of plain alignment beside the relevance-weighted one |
    | param | fourier | fourier | fourier (the decorrelated spectrum) or pixel (the paper's image) |
    | activation | - | 1 | weight of the target's mean activation, from the alignment's forward; 0 is the paper's alignment alone |
    | sliced | - | 0 | weight of sliced-Wasserstein alignment along random channel directions (`vital.objectives.sliced`) |
    | projections | - | channels | the number of those directions (default one per channel) |
    | augment | - | none | none, or scale-rotate: random scaling and rotation of every step's image |
    | relevance_rules | - | zplus | the rule chain's LRP rule per layer type: a preset (zplus, epsilon-plus, epsilon) or a map |

    "-": the option is refused for classes (a class is aligned with its references as a whole). The defaults are
    declared once (`HISTORY`); tests/test_option_defaults.py checks this table, the help text and the record
    against them."""

    layers: Sequence[str] | None = None
    layer_weights: Sequence[float] | None = None
    feat_dist: float = 1.0
    relevance: str | None = None
    mask: str | None = None
    target_weight: float | None = None
    unweighted: float | None = None
    param: str | None = None
    activation: float | None = None
    sliced: float | None = None
    projections: int | None = None
    augment: str | None = None
    relevance_rules: str | Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        validate.choice("relevance", self.relevance, RELEVANCE_METHODS)
        validate.choice("mask", self.mask, MASK_RULES)
        validate.choice("param", self.param, PARAMS)
        validate.names("layers", self.layers)
        validate.numbers("layer_weights", self.layer_weights, low=0)
        validate.number("feat_dist", self.feat_dist, low=0, optional=False)
        validate.choice("augment", self.augment, AUGMENTS)
        validate.integer("projections", self.projections, low=1)
        if self.relevance_rules is not None:
            resolve_rules(self.relevance_rules)
        for name in ("target_weight", "unweighted", "activation", "sliced"):
            validate.number(name, getattr(self, name), low=0)


# Channel defaults, chosen by bench/quality_neuron.py (bench/RESULTS.md): relevance-weighted reference
# distributions, as much plain alignment beside them, and Lucid's decorrelated Fourier image, whose smooth start
# leaves no untouched pixel noise where the relevance is low. Matching the target channel's own distribution
# (target_weight) raises its activation a little but costs naturalness (KID) and retrieval: off by default.
# The activation term (the target unit's mean activation, weight 1, read from the same forward as the alignment)
# was chosen on photos the optimisation never saw: it halves KID at _blocks.7 and raises retrieval and sharpness
# over both layers (bench/RESULTS.md, issue 19); `activation=0` is the alignment alone, as the paper.
NEURON_DEFAULTS = {"relevance": "lrp", "mask": "reference", "target_weight": 0.0, "unweighted": 1.0,
                   "param": "fourier", "activation": 1.0}
# Additions measured on held-out photos (bench/quality_neuron.py); off by default.
NEURON_EXTRAS = {"sliced": 0.0, "augment": "none", "relevance_rules": DEFAULT_PRESET}
NEURON_PRIORS = {"tv_l2": 3e-7, "l2": 3e-7}  # the authors' intermediate-neuron defaults
FOURIER_LR = 0.05  # Lucid's Adam step for a spectrum
# Classes: the decorrelated Fourier image, chosen on nine photos (three that no earlier tuning used): the paper's
# pixel image carries stripes (high-frequency power 17x the photo's, 0.64x for Fourier) at no better target top-1
# (4/9 against 5/9; bench/quality_class.py, bench/RESULTS.md). `param="pixel"` is the paper's image.
CLASS_PARAM = "fourier"
STEM_WEIGHT = 0.1  # as the authors' code: the stem is down-weighted for neurons (w0 = 0.1)


def _legacy(options: dict[str, Any], classes: bool) -> dict[str, Any]:
    """A record from before typed options: its relevance was "lrp" for classes too (unused), and a channel run used
    the authors' form, the only one there was."""
    out = dict(options)
    if classes:
        out.pop("relevance", None)
    else:
        out.update(mask="multiply", target_weight=0.0, unweighted=0.0, param="pixel")
    return out


# The one place VITAL's kind-dependent defaults are declared (the help text and the record follow them; the
# `VitalOptions` table is checked against them), and the defaults that changed after records were written.
HISTORY = OptionHistory(defaults={"class": {"param": CLASS_PARAM}, "channel": {**NEURON_DEFAULTS, **NEURON_EXTRAS}},
                        changed={"class": {"param": "pixel"}, "channel": {"activation": 0.0}}, legacy=_legacy)


def resolve_layers(model: VisionModel, opts: VitalOptions) -> tuple[list[str], list[float], dict]:
    """Matched layers and weights: the user's, else the preset's; plus the preset's priors."""
    preset = model.preset
    layers = list(opts.layers) if opts.layers else list(preset.layers or ())
    if not layers:
        raise VitalError(f"no layers to match for {model.name}: pass --layers (see `vital layers {model.name}`)")
    if opts.layer_weights:
        weights = list(opts.layer_weights)
    elif opts.layers:
        weights = [1.0] * len(layers)
    else:
        weights = list(preset.layer_weights or [1.0] * len(layers))
    if len(weights) != len(layers):
        raise VitalError(f"{len(layers)} layers but {len(weights)} layer weights; give one weight per layer")
    priors = {"tv_l2": preset.tv_l2, "l2": preset.l2, "tv_l1": preset.tv_l1}
    return layers, weights, priors


@register("vital", VitalOptions, history=HISTORY)
def build(model: VisionModel, targets: Sequence[Target], references: Sequence[ReferenceSet | None],
          run: RunOptions, opts: VitalOptions) -> Recipe:
    if all(isinstance(t, Channel) for t in targets) or all(isinstance(t, Direction) for t in targets):
        return _build_channels(model, targets, references, run, opts)
    if not all(isinstance(t, Class) for t in targets):
        raise VitalError("a VITAL batch holds classes, channels or directions, not a mix; run them separately")
    refs = [r for r in references if r is not None]
    if len(refs) != len(references):
        raise VitalError("VITAL needs reference images for every class: pass --refs DIR (ImageNet train layout or "
                         "a folder of images of the class)")
    neuron_only = {k: getattr(opts, k) for k in ("mask", "target_weight", "unweighted", "activation", "sliced",
                                                 "projections", "augment", "relevance_rules")}
    if opts.relevance not in (None, "none") or any(v is not None for v in neuron_only.values()):
        given = {k: v for k, v in {"relevance": opts.relevance, **neuron_only}.items() if v is not None}
        raise VitalError(f"options {sorted(given)} apply to channel targets; a class is aligned with its "
                         "references as a whole")
    layers, weights, priors = resolve_layers(model, opts)
    chosen_param = opts.param or CLASS_PARAM
    fourier = chosen_param == "fourier"
    settings, clip, prior_term = loop_settings(run, {**priors, **({"lr": FOURIER_LR} if fourier else {})})
    check_input_size(model, settings)
    objective = Alignment(model, layers, [float(w) * opts.feat_dist for w in weights], refs)
    param = _fourier(model, len(targets), run) if fourier else pixel_param(model, len(targets), run, clip)
    return Recipe(param, prior_term + objective, settings, resolved={"param": chosen_param})


def _fourier(model: VisionModel, batch: int, run: RunOptions) -> FourierParam:
    lo, hi = model.pixel_bounds()
    return FourierParam(batch, model.size, lo, hi, generator=seed_generator(run))


def _target_layer(targets: Sequence[Target]) -> str:
    """The one layer that a neuron batch targets."""
    layers_of = {t.layer for t in targets if isinstance(t, (Channel, Direction))}
    if len(layers_of) != 1:
        raise VitalError(f"a neuron batch must target one layer, got {sorted(layers_of)}; run each layer separately")
    return next(iter(layers_of))


def _units(targets: Sequence[Target], rows: list[LayerRow], device: torch.device) -> tuple[str, Readout]:
    """The target layer and one unit per target: channels (at a position, if given) or directions, checked
    against the layer's output."""
    target_layer = _target_layer(targets)
    row = next((r for r in rows if r.name == target_layer), None)
    if row is None:
        raise VitalError(f"layer '{target_layer}' has no channels to visualise; pick a layer with a (B, C, ...) output")
    units = Readout.from_targets(targets, device)
    readout.check(units, row.shape, row.layout, target_layer)
    return target_layer, units


def _build_channels(model: VisionModel, targets: Sequence[Target], references: Sequence[ReferenceSet | None],
                    run: RunOptions, opts: VitalOptions) -> Recipe:
    refs = [r for r in references if r is not None]
    if len(refs) != len(references):
        raise VitalError("VITAL needs reference images for every neuron: mine them (vital mine) and pass the store "
                         "with --refs, or a folder of its top images")
    resolve_modules(model.module, [_target_layer(targets)])
    rows = layer_table(model.module, torch.zeros(1, 3, model.size, model.size, device=model.device, dtype=model.dtype))
    target_layer, units = _units(targets, rows, model.device)
    chosen: dict[str, Any] = {k: getattr(opts, k) if getattr(opts, k) is not None else v
                              for k, v in {**NEURON_DEFAULTS, **NEURON_EXTRAS}.items()}
    candidates, weights, priors = resolve_layers(model, opts)
    upstream = upstream_of(model.module, target_layer, candidates, rows=rows)
    if not upstream:
        raise VitalError(f"target layer '{target_layer}' is upstream of every matched layer ({', '.join(candidates)});"
                         " pick a deeper target or pass --layers with layers before it")
    if opts.layer_weights:
        w = [weights[candidates.index(n)] for n in upstream]
    else:
        w = [STEM_WEIGHT if i == 0 and len(upstream) > 1 else weights[candidates.index(n)]
             for i, n in enumerate(upstream)]
    fourier = chosen["param"] == "fourier"
    settings, clip, prior_term = loop_settings(run, {**priors, **NEURON_PRIORS, **({"lr": FOURIER_LR} if fourier
                                                                                     else {})})
    check_input_size(model, settings)
    alignment = dict(channels=units, target_layer=target_layer, relevance=chosen["relevance"], mask=chosen["mask"],
                     target_weight=chosen["target_weight"], unweighted=chosen["unweighted"],
                     activation=chosen["activation"], relevance_rules=chosen["relevance_rules"], chunk=8)
    layer_w = [float(v) * opts.feat_dist for v in w]
    objective: Alignment
    if chosen["sliced"]:
        objective = SlicedAlignment(model, upstream, layer_w, refs, sliced=chosen["sliced"],
                                    projections=opts.projections, seed=run.seed, **alignment)
        chosen["projections"] = opts.projections or "channels"
    else:
        objective = Alignment(model, upstream, layer_w, refs, **alignment)
    param: Parameterization
    param = _fourier(model, len(targets), run) if fourier else pixel_param(model, len(targets), run, clip)
    augment = scale_rotate if chosen["augment"] == "scale-rotate" else None
    engine = objective.engine  # which relevance engine runs, and why: the rule chain and the modified-gradient
    ran = {} if engine is None else {"relevance_backend": engine.backend, "relevance_reason": engine.reason}
    return Recipe(param, prior_term + objective, settings, augment=augment,
                  resolved={"target_layer": target_layer, "matched_layers": upstream, **chosen, **ran})
