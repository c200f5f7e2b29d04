"""Activation-maximisation objectives of the baselines (MACO, Fourier, pixel, DeepInversion), one loss per sample so
that a batch can hold several targets. Losses are negated activations: lower is better, as every objective of the
loop."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vital.errors import VitalError
from vital.features import FeatureExtractor, LayoutProbe
from vital.layout import Layout, to_positions
from vital.models.zoo import VisionModel
from vital.objectives.base import Term, Views
from vital.relevance import readout
from vital.relevance.readout import Readout
from vital.targets import Class, Target

REDUCTIONS = ("mean", "sum", "max")


def _per_sample_index(index: torch.Tensor, batch: int, count: int, what: str) -> torch.Tensor:
    index = (index if isinstance(index, torch.Tensor) else torch.as_tensor(index, device="cpu")).long().reshape(-1)
    if index.numel() != batch:
        raise VitalError(f"one {what} per sample is needed: got {index.numel()} for a batch of {batch}")
    if index.numel() and (index.min() < 0 or index.max() >= count):
        raise VitalError(f"{what} {index.tolist()} out of range: the layer has {count} (valid: 0..{count - 1})")
    return index


def _reduce(values: torch.Tensor, reduce: str) -> torch.Tensor:
    """Reduce (B, P) over positions."""
    if reduce == "mean":
        return values.mean(dim=1)
    if reduce == "sum":
        return values.sum(dim=1)
    if reduce == "max":
        return values.amax(dim=1)
    raise VitalError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")


def class_logit(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """-logits[b, classes[b]] for `logits` (B, K): (B,)."""
    if logits.dim() != 2:
        raise VitalError(f"class logits must be (B, classes), got shape {tuple(logits.shape)}")
    idx = _per_sample_index(classes, logits.shape[0], logits.shape[1], "class").to(logits.device)
    return -logits.gather(1, idx[:, None]).squeeze(1)


def channel_activation(act: torch.Tensor, channels: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """-reduce over positions of act[b, channels[b]] for `act` (B, C), (B, C, P) or (B, C, H, W): (B,)."""
    if act.dim() < 2:
        raise VitalError(f"activations must be (B, C, ...), got shape {tuple(act.shape)}")
    flat = act.reshape(act.shape[0], act.shape[1], -1)
    idx = _per_sample_index(channels, act.shape[0], act.shape[1], "channel").to(act.device)
    picked = flat.gather(1, idx[:, None, None].expand(-1, 1, flat.shape[2])).squeeze(1)
    return -_reduce(picked, reduce)


def direction(act: torch.Tensor, vectors: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """-reduce over positions of <act[b, :, p], v_b> for `act` (B, C, ...) and `vectors` (C,) shared or (B, C) one
    per sample: (B,). The vectors are used as given (normalise them first for a unit direction)."""
    if act.dim() < 2:
        raise VitalError(f"activations must be (B, C, ...), got shape {tuple(act.shape)}")
    batch, chans = act.shape[:2]
    v = vectors.to(device=act.device, dtype=act.dtype)
    if v.dim() == 1:
        v = v.expand(batch, -1)
    if tuple(v.shape) != (batch, chans):
        raise VitalError(f"direction vectors must be ({chans},) or ({batch}, {chans}) for activations of shape "
                         f"{tuple(act.shape)}, got {tuple(vectors.shape)}")
    dots = torch.einsum("bcp,bc->bp", act.reshape(batch, chans, -1), v)
    return -_reduce(dots, reduce)


class Activation(Term):
    """Per image: the negative class logit (or the cross-entropy of the class), or the negative mean over
    positions (all, or the chosen one) of a unit's readout: a channel or a direction (`Readout.from_targets`).
    Several augmented views of an image are averaged."""

    name = "activation"

    def __init__(self, model: VisionModel, targets: Sequence[Target], cross_entropy: bool = False):
        self.model, self.targets, self.cross_entropy = model, list(targets), cross_entropy
        dev = model.device
        self._rows: dict[tuple[int, torch.device], dict[str, torch.Tensor]] = {}
        self.layouts: dict[str, Layout] = {}  # each layer's, read (and its units checked) at the first step
        classes = [t.index for t in self.targets if isinstance(t, Class)]
        if len(classes) == len(self.targets):
            self.kind = "class"
            self.index = torch.tensor(classes, device=dev)
        else:
            layers = [getattr(t, "layer", None) for t in self.targets]
            units = Readout.from_targets(self.targets, dev, model.dtype) if None not in layers else None
            if units is None or (units.vectors is not None and len(set(layers)) != 1):
                raise VitalError("a batch must hold only Class, only Channel, or only Direction targets of one "
                                 "layer; run them separately")
            self.units = units
            self.kind = "direction" if units.vectors is not None else "channel"
            self.layers = sorted({str(n) for n in layers})
            self.extractor = FeatureExtractor(model.module, self.layers, view="raw")
            self.index = torch.arange(len(self.targets), device=dev)  # the unit of each view: its target's row
        if cross_entropy and self.kind != "class":
            raise VitalError("the cross-entropy objective needs class targets")

    def _per_view(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if self.kind == "class":
            logits = self.model(x)
            if self.cross_entropy:
                return F.cross_entropy(logits, index, reduction="none")
            return class_logit(logits, index)
        feats = self.extractor(x)
        losses = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        views = x.shape[0] // len(self.targets)
        for layer, rows in self.rows(views, x.device).items():
            raw = feats[layer][rows]
            units = self.units.expand(index[rows])
            layout = self.layouts.get(layer)
            if layout is None:
                layout = self.layouts[layer] = LayoutProbe.layout(self.model.module, layer, tuple(raw.shape), x)
                readout.check(units, tuple(raw.shape), layout, layer)
            loss = -readout.mean_value(to_positions(raw, layout), units, tuple(raw.shape), layout)
            losses = losses.index_put((rows,), loss)
        return losses

    def rows(self, views: int, device: torch.device) -> dict[str, torch.Tensor]:
        """For each layer, the rows of a (targets x views) batch whose target is in that layer (kept per view count
        for the life of this term)."""
        key = (views, device)
        if key not in self._rows:
            rows = {layer: [i * views + v for i, t in enumerate(self.targets) if getattr(t, "layer", None) == layer
                            for v in range(views)] for layer in self.layers}
            self._rows[key] = {layer: torch.tensor(r, device=device) for layer, r in rows.items() if r}
        return self._rows[key]

    def __call__(self, v: Views) -> torch.Tensor:
        return v.per_image(self._per_view(v.views, self.index.repeat_interleave(v.n_views)))

    def state(self) -> dict:
        return {"name": self.name, "kind": self.kind, "cross_entropy": self.cross_entropy}
