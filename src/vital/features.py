"""Capture named layer outputs in one forward that stops after the deepest of them.

Every captured output is returned as (B, C, P): C channels by P positions. A 4-D map (B, C, H, W) gives P = H*W;
a token sequence (B, T, D), as a ViT encoder layer emits it, gives D channels by T token positions (CLS included);
a vector (B, C) gives P = 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vital.errors import VitalError, closest


class _Stop(Exception):
    """Raised by the hook of the deepest layer so that nothing after it runs."""


def as_channels_by_positions(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, HW); (B, T, D) -> (B, D, T); (B, C) -> (B, C, 1)."""
    if t.dim() == 4:
        return t.flatten(2)
    if t.dim() == 3:
        return t.transpose(1, 2)
    if t.dim() == 2:
        return t.unsqueeze(-1)
    raise VitalError(f"cannot read a layer output of shape {tuple(t.shape)} as channels x positions")


def resolve_modules(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Look up dotted module names; an unknown one is an error listing the closest names."""
    modules = dict(model.named_modules())
    out = {}
    for n in names:
        if n not in modules:
            raise VitalError(f"model has no layer '{n}'.{closest(n, [k for k in modules if k])} "
                             "`vital layers MODEL` lists them.")
        out[n] = modules[n]
    return out


class FeatureExtractor:
    """Runs `model` on a batch and returns the outputs of `layers` as (B, C, P) tensors, skipping everything after
    the last of them to execute. With `raw=True` the outputs keep their original shapes."""

    def __init__(self, model: nn.Module, layers: Sequence[str], raw: bool = False, stop_early: bool = True):
        if not layers:
            raise VitalError("no layers to capture")
        self.model = model
        self.layers = list(dict.fromkeys(layers))
        self.modules = resolve_modules(model, self.layers)
        self.raw = raw
        self.stop_early = stop_early

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}
        wanted = set(self.layers)

        def make_hook(name: str):
            def hook(_m: nn.Module, _inp, out) -> None:
                if name in captured:
                    return  # a module called twice (shared activation): keep its first use
                if isinstance(out, (tuple, list)):
                    out = out[0]
                if not torch.is_tensor(out):
                    raise VitalError(f"layer '{name}' returns {type(out).__name__}, not a tensor; pick another layer")
                captured[name] = out if self.raw else as_channels_by_positions(out)
                if self.stop_early and wanted.issubset(captured):
                    raise _Stop

            return hook

        handles = [m.register_forward_hook(make_hook(n)) for n, m in self.modules.items()]
        try:
            self.model(x)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in self.layers if n not in captured]
        if missing:
            raise VitalError(f"layers {missing} did not run in the forward pass; pick layers the model uses")
        return {n: captured[n] for n in self.layers}


def layer_table(model: nn.Module, x: torch.Tensor) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, type, output shape) for every named module that returns a tensor, in execution order."""
    rows: list[tuple[str, str, tuple[int, ...]]] = []
    seen: set[str] = set()

    def make_hook(name: str):
        def hook(m: nn.Module, _inp, out) -> None:
            if name in seen:
                return
            seen.add(name)
            if isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
                out = out[0]
            if torch.is_tensor(out):
                rows.append((name, type(m).__name__, tuple(out.shape)))

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return rows


def upstream_of(model: nn.Module, target: str, candidates: Sequence[str], size: int = 224,
                rows: Sequence[tuple[str, str, tuple[int, ...]]] | None = None) -> list[str]:
    """The candidates whose output is complete before the target's output is, in the given order (the execution
    order of one forward at `size` px, or of `rows` from `layer_table`). The target itself and the containers that
    hold it are not upstream: only these layers can be weighted by the target's relevance (SPEC section 7)."""
    resolve_modules(model, [target, *candidates])
    if rows is None:
        p = next(model.parameters(), None)
        x = torch.zeros(1, 3, size, size, device=p.device if p is not None else "cpu",
                        dtype=p.dtype if p is not None else torch.float32)
        rows = layer_table(model, x)
    order = {name: i for i, (name, _, _) in enumerate(rows)}
    if target not in order:
        raise VitalError(f"target layer '{target}' does not return a tensor in the forward pass")
    return [n for n in candidates if n in order and order[n] < order[target] and not target.startswith(n + ".")]
