"""Relevance of one target unit per sample, captured at named layers (arXiv 2503.22399).

`RelevanceEngine` chooses a backend once (`vital.relevance.choice.select_backend`: the rule chain, the
modified-gradient rules or guided backprop; docs/relevance-backends.md lists their rules) and runs it. The results
are detached, non-negative and have the shapes of the layer outputs.

Methods:
- "lrp": the start is the whole activation map of channel c_b, A[b, c_b] (clamped at 0: a block output without a
  final ReLU, as in MobileNetV2 or EfficientNet-Lite, can be negative), zero elsewhere.
- "lrp-restricted": the start is 1 at the single position (h*, w*) where channel c_b is most aligned with the
  activation vector, argmax A[b, c_b, h, w] / ||A[b, :, h, w]||, zero elsewhere.
- "guided-backprop": ReLU of the guided gradient of the channel's spatial mean (see `vital.relevance.guided`).
A unit may also be a channel at one position, or a direction (`vital.relevance.readout`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from vital.errors import VitalError
from vital.relevance.choice import select_backend
from vital.relevance.readout import Readout, as_readout
from vital.relevance.zplus import EPS


class RelevanceEngine:
    """Relevance maps of a target unit at `layers`, for a batch with one unit per sample. `backend` names the
    backend chosen, `reason` says why, `rules` is the backend itself; `joint_forward` says whether
    `features_and_relevance` can share one forward."""

    def __init__(self, model: nn.Module, target_layer: str, layers: Sequence[str], method: str = "lrp", *,
                 eps: float = EPS, fold_batchnorm: bool = True, conserve: bool = True,
                 rules: str | Mapping[str, str] | None = None):
        """`eps`: the stabiliser of every rule. `fold_batchnorm`: fold each BatchNorm that follows a convolution
        into that convolution's z+ rule (canonization); without it BatchNorm passes relevance unchanged, as the
        authors' code does. `conserve`: where a convolution's output has no positive contribution (z+ = 0: a
        filter whose weights are all negative on non-negative inputs), its relevance goes back by the w^2 rule
        instead of being dropped (the authors' code, and plain z+, drop it). `rules`: the rule per layer type, a
        preset name or a map (`vital.relevance.rule_maps`; default z+ everywhere). The last four apply to the
        chain."""
        choice = select_backend(model, target_layer, layers, method, eps=eps, fold_batchnorm=fold_batchnorm,
                                conserve=conserve, rules=rules)
        self.model, self.target_layer, self.method = model, target_layer, method
        self.layers = list(dict.fromkeys(layers))
        self.rules, self.reason = choice.backend, choice.reason
        self.backend: str = self.rules.name
        self.joint_forward: bool = self.rules.joint_forward
        self._mode_sensitive = [m for m in model.modules()
                                if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd))]

    def _check_mode(self) -> None:
        if any(m.training for m in self._mode_sensitive):
            raise VitalError("the model is in training mode (BatchNorm/Dropout would mix or drop samples); "
                             "call model.eval() first")

    def __call__(self, x: torch.Tensor, channels: Readout | torch.Tensor | int) -> dict[str, torch.Tensor]:
        """{layer: relevance shaped like that layer's output} for x (B, 3, H, W) and one unit per sample: a
        channel (an int for all, or a tensor), or a `Readout` (a channel at a position, a direction)."""
        self._check_mode()
        return self.rules(x, as_readout(channels, x.shape[0], x.device))

    def features_and_relevance(self, x: torch.Tensor, channels: Readout | torch.Tensor | int
                               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One forward for both: the outputs of `layers` with their autograd graph to `x` (for a loss), and the
        relevance maps (detached). Saves the separate feature forward that an optimisation step would otherwise
        run; only where `joint_forward` (the rule chain): otherwise call the engine for the relevance."""
        if not self.joint_forward:
            raise VitalError(f"features_and_relevance needs the LRP rule chain, and the {self.backend} backend runs "
                             "here; call the engine for the relevance")
        self._check_mode()
        return self.rules.features_and_relevance(x, as_readout(channels, x.shape[0], x.device))


def relevance_maps(model: nn.Module, x: torch.Tensor, target_layer: str, channels: torch.Tensor | int,
                   layers: Sequence[str], method: str = "lrp") -> dict[str, torch.Tensor]:
    """One-shot `RelevanceEngine(model, target_layer, layers, method)(x, channels)`; build an engine to reuse it."""
    return RelevanceEngine(model, target_layer, layers, method)(x, channels)
