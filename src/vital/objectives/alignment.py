"""VITAL's objective: sort-matching of the image's feature distributions against those of real references, per
sample, optionally weighted by the relevance of a target channel (arXiv 2503.22399, method section; docs/concepts/relevance.md).

    L_b = sum_l w_l * SM(phi_l(x_b), q_l(b); importance_l(b))  [+ w_t * SM(A_t[c_b](x_b), q_t(b))]

Classes (relevance "none"): phi_l = F_l, and q_l(b) is the quantile barycenter of F_l over sample b's references.

Channels weighted by relevance R_l of the target channel c_b at layer l (LRP and its alternatives, computed once for
the references under no_grad); every mask is M = per-image, per-channel min-max of R over positions:
- mask "reference" (default): the prototype is the barycenter of the references' *relevance-weighted* distributions
  (each reference's weighted quantiles, weights M_ref), and the synthetic features enter unweighted. The image is
  asked to show, everywhere, the features that the references show where they matter to the neuron. No relevance
  pass runs per step.
- mask "multiply" (the authors' code): phi_l = M_l(x) * F_l(x) with the synthetic mask recomputed every step
  (detached), and the prototype built from M_ref * F_ref.
Either way, importance_l(b) (the max of R over positions, min-max over channels, averaged over the references)
weights each channel's error, and `unweighted` adds that much of the plain (relevance "none") alignment.
The target term matches the distribution over positions of the target channel itself (weight w_t): what carries
the neuron's identity, where the upstream layers alone match only textures.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from vital.errors import VitalError
from vital.features import FeatureExtractor, as_channels_by_positions
from vital.layout import Layout, to_positions
from vital.models.zoo import VisionModel
from vital.objectives.base import Term, Views
from vital.objectives.sort_matching import (
    Prototype,
    PrototypeAccumulator,
    sort_matching_loss,
    sort_matching_losses,
)
from vital.references.images import ReferenceSet
from vital.relevance import ATTRIBUTION_METHODS, RelevanceEngine, readout
from vital.relevance.readout import Readout, as_readout, cnn_layout

MASK_EPS = 1e-6
RELEVANCE_METHODS = (*ATTRIBUTION_METHODS, "none")
MASK_RULES = ("reference", "multiply")


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

    def chunks(self, i: int, chunk: int, downsample: int) -> Iterator[torch.Tensor]:
        """Set i in chunks, pooled exactly as the network sees the synthetic image at this resolution."""
        pixels = self.pixels(i)
        for start in range(0, pixels.shape[0], chunk):
            x = pixels[start:start + chunk]
            yield F.avg_pool2d(x, downsample) if downsample > 1 else x

    def per_sample(self, values: dict[int, torch.Tensor]) -> torch.Tensor:
        """Stack one tensor per distinct set into one row per sample."""
        return torch.stack([values[i] for i in self.index])


class Alignment(Term):
    """Sort-matching against reference prototypes, one per sample; see the module docstring."""

    name = "alignment"

    def __init__(self, model: VisionModel, layers: Sequence[str], weights: Sequence[float],
                 references: Sequence[ReferenceSet], *, channels: Sequence[int] | Readout | None = None,
                 target_layer: str | None = None, relevance: str = "none", mask: str = "reference",
                 target_weight: float = 0.0, unweighted: float = 0.0, activation: float = 0.0, chunk: int = 16,
                 relevance_rules: str | Mapping[str, str] | None = None):
        if len(weights) != len(layers):
            raise VitalError(f"{len(layers)} layers but {len(weights)} layer weights; give one weight per layer")
        if relevance not in RELEVANCE_METHODS:
            raise VitalError(f"unknown relevance '{relevance}'; use one of {', '.join(RELEVANCE_METHODS)}")
        if mask not in MASK_RULES:
            raise VitalError(f"unknown mask rule '{mask}'; use one of {', '.join(MASK_RULES)}")
        if (relevance != "none" or target_weight or activation) and (channels is None or target_layer is None):
            raise VitalError("relevance weighting, the target term and the activation term need a target layer and "
                             "one unit per sample")
        self.model, self.layers, self.weights = model, list(layers), [float(w) for w in weights]
        self.relevance, self.mask, self.chunk = relevance, mask, chunk
        self.target_weight, self.unweighted, self.activation = float(target_weight), float(unweighted), float(activation)
        self.target_layer = target_layer
        # one unit per sample: a channel, a channel at a position, or a direction (vital.relevance.readout)
        self.units: Readout | None = None
        if isinstance(channels, Readout):
            self.units = as_readout(channels, channels.batch, model.device)
        elif channels is not None:
            self.units = Readout(channels=torch.tensor(list(channels), device=model.device))
        if self.target_weight and self.units is not None and (self.units.channels is None
                                                              or self.units.positions is not None):
            raise VitalError("the target term matches a whole channel's distribution; it does not apply to a "
                             "direction or a position: leave target_weight at 0")
        self.refs = ReferencePixels(model, references)
        # the target layer's own output is captured too when a term reads it (relevance there is unused): one
        # forward serves the alignment, the target term and the activation term
        reads_target = bool(self.target_weight or self.activation)
        extra = target_layer if reads_target and target_layer not in self.layers else None
        captured = self.layers + ([extra] if extra is not None else [])
        self.extractor = FeatureExtractor(model.module, captured)
        self.engine = None
        if relevance != "none":
            assert target_layer is not None  # checked above
            self.engine = RelevanceEngine(model.module, target_layer, captured, relevance, rules=relevance_rules)
        self.q: dict[str, torch.Tensor] = {}
        self.q_plain: dict[str, torch.Tensor] = {}
        self.importance: dict[str, torch.Tensor] = {}
        self.q_target: torch.Tensor | None = None
        self._geometry: dict[str, tuple[tuple[int, ...], Layout]] = {}  # raw shape and layout of each captured layer

    @property
    def channels(self) -> torch.Tensor | None:
        """The target channel of each sample (None for classes and directions)."""
        return None if self.units is None else self.units.channels

    @property
    def weighted(self) -> bool:
        return self.engine is not None

    # ---- both sides -----------------------------------------------------------------------------------------------

    def _encode(self, x: torch.Tensor, channels: Readout | None, relevance: bool
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """Features (B, C, P) of every captured layer, with their graph to x when grad is on, and, if asked, the
        target's relevance at the matched layers (detached). The LRP methods share one forward for both."""
        if not (relevance and self.engine is not None and self.engine.joint_forward):
            feats = self.extractor(x)
            self._geometry = {n: (self.extractor.shapes[n], self.extractor.layouts[n]) for n in feats}
            if not relevance:
                return feats, None
            assert self.engine is not None and channels is not None
            rel = self.engine(x.detach(), channels)
            return feats, {n: to_positions(r, self._geometry[n][1]) for n, r in rel.items() if n in self.layers}
        assert self.engine is not None and channels is not None
        raw, rel = self.engine.features_and_relevance(x, channels)  # a rule chain: channels-first maps
        self._geometry = {n: (tuple(f.shape), cnn_layout(f)) for n, f in raw.items()}
        feats = {n: as_channels_by_positions(f) for n, f in raw.items()}
        return feats, {n: as_channels_by_positions(r) for n, r in rel.items() if n in self.layers}

    @torch.no_grad()
    def prepare(self, downsample: int) -> None:
        q, q_plain, importance, q_target = {}, {}, {}, {}
        for i in self.refs.unique():
            row = self.refs.index.index(i)
            channel = None if self.channels is None else self.channels[row]
            accs = {n: PrototypeAccumulator() for n in self.layers}
            plain = {n: PrototypeAccumulator() for n in self.layers} if self.weighted and self.unweighted else {}
            target = PrototypeAccumulator()
            rel_sum: dict[str, torch.Tensor] = {}
            count = 0
            for x in self.refs.chunks(i, self.chunk, downsample):
                units = None if self.units is None else self.units.expand(
                    torch.full((x.shape[0],), row, dtype=torch.long, device=self.units.batch_device))
                feats, rel = self._encode(x, units, self.weighted)
                for n in self.layers:
                    if rel is None:
                        accs[n].add(feats[n])
                        continue
                    m = relevance_mask(rel[n])
                    if self.mask == "multiply":
                        accs[n].add(m * feats[n])
                    else:
                        accs[n].add(feats[n], weights=m)
                    rel_sum[n] = rel_sum.get(n, 0) + channel_importance(rel[n]) * x.shape[0]
                    if n in plain:
                        plain[n].add(feats[n])
                if self.target_weight:
                    target.add(feats[str(self.target_layer)][:, channel].unsqueeze(1))
                count += x.shape[0]
            q[i] = {n: a.prototype() for n, a in accs.items()}
            q_plain[i] = {n: a.prototype() for n, a in plain.items()}
            importance[i] = {n: r / count for n, r in rel_sum.items()}
            if self.target_weight:
                q_target[i] = target.prototype()
        self.q = {n: self.refs.per_sample({i: q[i][n] for i in q}) for n in self.layers}
        self.q_plain = {n: self.refs.per_sample({i: q_plain[i][n] for i in q}) for n in q_plain[self.refs.index[0]]}
        self.importance = {n: self.refs.per_sample({i: importance[i][n] for i in q}) for n in rel_sum}
        self.q_target = self.refs.per_sample(q_target) if q_target else None

    # ---- synthetic side: every step -------------------------------------------------------------------------------

    def __call__(self, v: Views) -> torch.Tensor:
        x = v.views
        per_view = (lambda t: t.repeat_interleave(v.n_views, dim=0)) if v.n_views > 1 else (lambda t: t)
        channels = None if self.channels is None else per_view(self.channels)
        units = None if self.units is None else self.units.expand(
            per_view(torch.arange(self.units.batch, device=self.units.batch_device)))
        feats, rel = self._encode(x, units, self.weighted and self.mask == "multiply")
        masks = None if rel is None else {n: relevance_mask(r) for n, r in rel.items()}
        loss = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for n, w in zip(self.layers, self.weights, strict=True):
            imp = self.importance.get(n)
            phi = feats[n] if masks is None else masks[n] * feats[n]
            targets = [Prototype(per_view(self.q[n]), None if imp is None else per_view(imp), w)]
            if n in self.q_plain:
                plain = Prototype(per_view(self.q_plain[n]), None, self.unweighted * w)
                if masks is None:  # the same features: one sort serves both prototypes
                    targets.append(plain)
                else:
                    loss = loss + sort_matching_losses(feats[n], [plain])
            loss = loss + sort_matching_losses(phi, targets)
        if self.q_target is not None:
            assert self.target_layer is not None  # a target term needs one
            f = feats[self.target_layer]
            row = f[torch.arange(f.shape[0], device=f.device), channels].unsqueeze(1)
            loss = loss + self.target_weight * sort_matching_loss(row, per_view(self.q_target))
        if self.activation:
            assert self.target_layer is not None and units is not None  # checked in __init__
            shape, layout = self._geometry[self.target_layer]
            loss = loss - self.activation * readout.mean_value(feats[self.target_layer], units, shape, layout)
        return v.per_image(loss)

    def state(self) -> dict:
        out: dict[str, object] = {"name": self.name, "layers": self.layers, "layer_weights": self.weights, "relevance": self.relevance}
        if self.units is not None:
            out.update(target_layer=self.target_layer, mask=self.mask, target_weight=self.target_weight,
                       unweighted=self.unweighted)
            if self.activation:
                out["activation"] = self.activation
        return out
