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
from vital.layout import Layout
from vital.relevance import readout
from vital.relevance.readout import Readout


class _Stop(Exception):
    """Raised once the target layer has run: nothing after it is needed."""


def _clamp_positive(grad: torch.Tensor) -> torch.Tensor:
    return grad.clamp(min=0)


def _guide(_m: nn.Module, _inp, out: torch.Tensor) -> None:
    # Clamping the output gradient before the ReLU's own mask equals clamping its input gradient.
    if out.requires_grad:
        out.register_hook(_clamp_positive)


def channel_score(a: torch.Tensor, units: Readout) -> torch.Tensor:
    """Sum over the batch of the mean of each sample's readout (its channel, or its direction) over its positions
    (every position, or the chosen one)."""
    layout = Layout.VECTOR if a.dim() == 2 else Layout.CHANNELS_FIRST
    v = readout.values(a, units, layout)  # (B, P)
    mask = readout.position_mask(units, tuple(a.shape), layout, v.shape[1], a.device)
    if mask is None:
        return v.mean(1).sum()
    return ((v * mask).sum(1) / mask.sum(1)).sum()


def guided_backprop(model: nn.Module, x: torch.Tensor, channels: Readout, target: tuple[str, nn.Module],
                    layers: dict[str, nn.Module], check_channels) -> dict[str, torch.Tensor]:
    """{layer: ReLU(d score / d layer output)} for the modules in `layers` (keyed by requested name)."""
    target_name, target_module = target
    outputs: dict[str, torch.Tensor] = {}
    hit: list[torch.Tensor] = []

    def capture(names: list[str], is_target: bool):
        def hook(_m: nn.Module, _inp, out):
            if not torch.is_tensor(out):
                raise VitalError(f"layer '{names[0]}' returns {type(out).__name__}, not a tensor; pick another layer")
            for n in names:
                outputs.setdefault(n, out)  # a module called twice keeps its first use
            if is_target and not hit:
                hit.append(out)
                raise _Stop
            return out.clone()  # later in-place operations (ReLU(inplace=True)) must not overwrite the captured value

        return hook

    by_module: dict[int, tuple[nn.Module, list[str]]] = {}
    for n, m in layers.items():
        by_module.setdefault(id(m), (m, []))[1].append(n)
    handles = [m.register_forward_hook(_guide) for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    try:
        for m, names in by_module.values():
            if m is not target_module:
                handles.append(m.register_forward_hook(capture(names, False)))
        handles.append(target_module.register_forward_hook(capture(by_module.get(id(target_module), (0, []))[1], True)))
        with torch.enable_grad():
            try:
                model(x.detach().requires_grad_(True))
            except _Stop:
                pass
            if not hit:
                raise VitalError(f"target layer '{target_name}' did not run in the forward pass; pick a layer the "
                                 "model uses")
            missing = [n for n in layers if n not in outputs]
            if missing:
                raise VitalError(f"layers {missing} do not run before the target layer '{target_name}'; relevance "
                                 "reaches only layers upstream of the target")
            check_channels(hit[0], channels)
            names = list(layers)
            grads = torch.autograd.grad(channel_score(hit[0], channels), [outputs[n] for n in names])
    finally:
        for h in handles:
            h.remove()
    return {n: g.detach().clamp(min=0) for n, g in zip(names, grads, strict=True)}
