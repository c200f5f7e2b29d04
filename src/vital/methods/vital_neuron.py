"""VITAL for intermediate neurons (SPEC section 4, with section 7 fixed): sort-matching of relevance-weighted
features at the matched layers upstream of the target channel.

Reference side, once per resolution under no_grad: features F_ref, relevance R_ref of the target channel at each
matched layer, masks M = per-image, per-channel min-max of R over positions, and channel importance (max of R over
positions, min-max over channels, averaged over the references); the prototype is the quantile barycenter of
M_ref * F_ref. Each step: features F of the synthetic batch (with grad), its relevance R (detached: a constant
weight), and the loss sum_l w_l * sort-matching(M * F, prototype_l, importance_l). The relevance method is
selectable ("lrp", "lrp-restricted", "guided-backprop") or "none" (plain features, the ablation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vital.errors import VitalError
from vital.features import FeatureExtractor, layer_table, resolve_modules
from vital.methods.base import Recipe, RunOptions, pixel_param
from vital.methods.vital import ReferencePixels, check_input_size, loop_settings, resolve_layers
from vital.models.zoo import VisionModel
from vital.objectives.sort_matching import PrototypeAccumulator, sort_matching_loss
from vital.references.images import ReferenceSet
from vital.targets import Channel, Target

MASK_EPS = 1e-6
NEURON_PRIORS = {"tv_l2": 3e-7, "l2": 3e-7}  # SPEC section 8, inner defaults
STEM_WEIGHT = 0.1  # SPEC: the stem is down-weighted for neurons (w0 = 0.1)
RELEVANCE_METHODS = ("lrp", "lrp-restricted", "guided-backprop", "none")


def relevance_mask(r: torch.Tensor) -> torch.Tensor:
    """(B, C, P) -> per image and channel, (R - min_p R) / (max_p (R - min_p R) + eps)."""
    shifted = r - r.amin(dim=-1, keepdim=True)
    return shifted / (shifted.amax(dim=-1, keepdim=True) + MASK_EPS)


def channel_importance(r: torch.Tensor) -> torch.Tensor:
    """(N, C, P) reference relevance -> (C,): max over positions, min-max over channels per image, mean over N."""
    i = r.amax(dim=-1)
    i = i - i.amin(dim=1, keepdim=True)
    i = i / (i.amax(dim=1, keepdim=True) + MASK_EPS)
    return i.mean(dim=0)


def model_layers(model: VisionModel) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, type, output shape) of every layer, in the order their outputs are complete (one forward)."""
    x = torch.zeros(1, 3, model.size, model.size, device=model.device, dtype=model.dtype)
    return layer_table(model.module, x)


def upstream_of(model: VisionModel, target_layer: str, candidates: Sequence[str],
                rows: Sequence[tuple[str, str, tuple[int, ...]]] | None = None) -> list[str]:
    """Candidates whose output is complete before the target's output is (execution order of one forward, or of
    `rows` from `model_layers`); the target itself and containers that hold it are not upstream."""
    resolve_modules(model.module, [target_layer, *candidates])
    order = {name: i for i, (name, _, _) in enumerate(rows if rows is not None else model_layers(model))}
    if target_layer not in order:
        raise VitalError(f"target layer '{target_layer}' does not return a tensor in the forward pass")
    return [n for n in candidates if n in order and order[n] < order[target_layer]
            and not target_layer.startswith(n + ".")]


class RelevanceSortMatching:
    """Per sample b: sum_l w_l * sort-matching(M_l(x) * F_l(x), prototype_l(b), importance_l(b))."""

    def __init__(self, model: VisionModel, targets: Sequence[Channel], layers: Sequence[str],
                 weights: Sequence[float], references: Sequence[ReferenceSet], relevance: str = "lrp",
                 chunk: int = 8):
        if relevance not in RELEVANCE_METHODS:
            raise VitalError(f"unknown relevance '{relevance}'; use one of {', '.join(RELEVANCE_METHODS)}")
        self.model, self.layers, self.weights = model, list(layers), [float(w) for w in weights]
        self.relevance, self.chunk = relevance, chunk
        self.target_layer = targets[0].layer
        self.channels = torch.tensor([t.channel for t in targets], device=model.device)
        self.refs = ReferencePixels(model, references)
        self.extractor = FeatureExtractor(model.module, self.layers)
        self.engine = None
        if relevance != "none":
            from vital.relevance import RelevanceEngine

            self.engine = RelevanceEngine(model.module, self.target_layer, self.layers, relevance)
        self.q: dict[str, torch.Tensor] = {}
        self.importance: dict[str, torch.Tensor] = {}

    def _masks(self, x: torch.Tensor, channels: torch.Tensor) -> dict[str, torch.Tensor] | None:
        if self.engine is None:
            return None
        return {n: r.flatten(2) if r.dim() == 4 else r for n, r in self.engine(x, channels).items()}

    @torch.no_grad()
    def prepare(self, downsample: int) -> None:
        protos, importance = {}, {}
        for i in self.refs.unique():
            channel = self.channels[self.refs.index.index(i)]
            accs = {n: PrototypeAccumulator() for n in self.layers}
            rel_sum = {n: 0.0 for n in self.layers}
            pixels = self.refs.pixels(i)
            for start in range(0, pixels.shape[0], self.chunk):
                x = pixels[start:start + self.chunk]
                if downsample > 1:
                    x = F.avg_pool2d(x, downsample)
                feats, rel = self._features_and_masks(x, channel.expand(x.shape[0]))
                for n in self.layers:
                    if rel is None:
                        accs[n].add(feats[n])
                        continue
                    accs[n].add(relevance_mask(rel[n]) * feats[n])
                    rel_sum[n] = rel_sum[n] + channel_importance(rel[n]) * x.shape[0]
            protos[i] = {n: a.prototype() for n, a in accs.items()}
            if rel is not None:
                importance[i] = {n: rel_sum[n] / pixels.shape[0] for n in self.layers}
        self.q = {n: torch.stack([protos[i][n] for i in self.refs.index]) for n in self.layers}
        self.importance = {n: torch.stack([importance[i][n] for i in self.refs.index]) for n in self.layers} \
            if importance else {}

    def _features_and_masks(self, x: torch.Tensor, channels: torch.Tensor):
        """Features (with graph) and relevance (flattened, detached); one shared forward for the LRP methods."""
        if self.engine is not None and self.relevance != "guided-backprop":
            feats, rel = self.engine.features_and_relevance(x, channels)
            flat = {n: f.flatten(2) if f.dim() == 4 else f for n, f in feats.items()}
            return flat, {n: r.flatten(2) if r.dim() == 4 else r for n, r in rel.items()}
        return self.extractor(x), self._masks(x.detach(), channels)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        feats, masks = self._features_and_masks(x, self.channels)
        loss = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for n, w in zip(self.layers, self.weights, strict=True):
            phi = feats[n] if masks is None else masks[n] * feats[n]
            loss = loss + w * sort_matching_loss(phi, self.q[n], self.importance.get(n))
        return loss

    def state(self) -> dict:
        return {"name": "relevance_sort_matching", "layers": self.layers, "layer_weights": self.weights,
                "relevance": self.relevance, "target_layer": self.target_layer}


def build_neuron(model: VisionModel, targets: Sequence[Target], references: Sequence[ReferenceSet | None],
                 opts: RunOptions) -> Recipe:
    if not all(isinstance(t, Channel) for t in targets):
        raise VitalError("a VITAL batch holds either classes or channels; run them separately")
    layers_of = {t.layer for t in targets}
    if len(layers_of) != 1:
        raise VitalError(f"a neuron batch must target one layer, got {sorted(layers_of)}; run each layer separately")
    if any(r is None for r in references):
        raise VitalError("VITAL needs reference images for every neuron: mine them (vital mine) and pass the store "
                         "with --refs, or a folder of its top images")
    target_layer = targets[0].layer
    resolve_modules(model.module, [target_layer])
    rows = model_layers(model)
    shapes = {n: s for n, _, s in rows}
    if target_layer not in shapes or len(shapes[target_layer]) < 2:
        raise VitalError(f"layer '{target_layer}' has no channels to visualise; pick a layer with a (B, C, ...) output")
    n_channels = shapes[target_layer][1]
    bad = [t.channel for t in targets if not 0 <= t.channel < n_channels]
    if bad:
        raise VitalError(f"channel {bad[0]} is out of range: layer '{target_layer}' has {n_channels} channels "
                         f"(0-{n_channels - 1})")
    candidates, weights, priors = resolve_layers(model, opts)
    upstream = upstream_of(model, target_layer, candidates, rows)
    if not upstream:
        raise VitalError(f"target layer '{target_layer}' is upstream of every matched layer ({', '.join(candidates)});"
                         " pick a deeper target or pass --layers with layers before it")
    if opts.layer_weights:
        w = [weights[candidates.index(n)] for n in upstream]
    else:
        w = [STEM_WEIGHT if i == 0 and len(upstream) > 1 else weights[candidates.index(n)]
             for i, n in enumerate(upstream)]
    settings, clip = loop_settings(opts, {**priors, **NEURON_PRIORS})
    check_input_size(model, settings)
    objective = RelevanceSortMatching(model, targets, upstream, w, references, opts.relevance)
    return Recipe(pixel_param(model, len(targets), opts, clip), objective, settings,
                  record={"target_layer": target_layer, "matched_layers": upstream})
