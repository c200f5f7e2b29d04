"""Guided backpropagation of one target channel to named layers, with temporary hooks on the real model.

The score is the spatial mean of channel c_b of the target layer's output, summed over the batch (each sample only
reaches its own score). Every nn.ReLU / nn.ReLU6 module passes only positive gradients back (the guided rule);
activations applied functionally are not guided. The result at each layer is ReLU(gradient of the score with
respect to that layer's output). Hooks are removed before returning; the model is not changed.
"""

from __future__ import annotations

import torch
from torch import nn

from vital.errors import VitalError
from vital.features import capture
from vital.relevance import readout
from vital.relevance.readout import Readout


def _clamp_positive(grad: torch.Tensor) -> torch.Tensor:
    return grad.clamp(min=0)


def _guide(_m: nn.Module, _inp, out: torch.Tensor) -> None:
    # Clamping the output gradient before the ReLU's own mask equals clamping its input gradient.
    if out.requires_grad:
        out.register_hook(_clamp_positive)


def channel_score(a: torch.Tensor, units: Readout) -> torch.Tensor:
    """Sum over the batch of the mean of each sample's readout (its channel, or its direction) over its positions
    (every position, or the chosen one)."""
    layout = readout.cnn_layout(a)
    v = readout.values(a, units, layout)  # (B, P)
    mask = readout.position_mask(units, tuple(a.shape), layout, v.shape[1], a.device)
    if mask is None:
        return v.mean(1).sum()
    return ((v * mask).sum(1) / mask.sum(1)).sum()


class GuidedRelevance:
    """The guided-backprop backend: one forward of the real model with its ReLUs guided, stopped after the target,
    and one backward of the channel score. `layers` and `target` map each requested name to the module producing
    its output (a container's last module, as the rule chain resolves it)."""

    name = "guided"
    joint_forward = False

    def __init__(self, model: nn.Module, target: tuple[str, nn.Module], layers: dict[str, nn.Module]):
        self.model, self.target, self.layers = model, target, layers

    def __call__(self, x: torch.Tensor, units: Readout) -> dict[str, torch.Tensor]:
        """{layer: ReLU(d score / d layer output)} for the modules in `layers` (keyed by requested name)."""
        target_name, target_module = self.target
        handles = [m.register_forward_hook(_guide) for m in self.model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
        try:
            with torch.enable_grad():
                outputs = capture(self.model, x.detach().requires_grad_(True), self.layers,
                                  until=self.target, copy=True)
                if target_name not in outputs:
                    raise VitalError(f"target layer '{target_name}' did not run in the forward pass; pick a layer "
                                     "the model uses")
                missing = [n for n in self.layers if n not in outputs]
                if missing:
                    raise VitalError(f"layers {missing} do not run before the target layer '{target_name}'; "
                                     "relevance reaches only layers upstream of the target")
                a = outputs[target_name]
                readout.check_target(units, a, readout.cnn_layout(a), target_name)
                names = list(self.layers)
                grads = torch.autograd.grad(channel_score(a, units), [outputs[n] for n in names])
        finally:
            for h in handles:
                h.remove()
        return {n: g.detach().clamp(min=0) for n, g in zip(names, grads, strict=True)}

    def features_and_relevance(self, x: torch.Tensor, units: Readout
                               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        raise VitalError("guided backprop needs a backward of its own: call the backend for the relevance")
