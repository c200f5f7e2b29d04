"""Capture named layer outputs in one forward that stops after the deepest of them.

Outputs are returned in one of the views of `vital.layout`, by each layer's own layout: "positions" (B, C, P):
C channels by P positions (a channels-first or channels-last map gives P = H*W; a ViT token sequence (B, T, D)
gives D channels by T tokens, class token included; a vector gives P = 1); "map" (B, C, H, W); or "raw" (as the
layer returned it). A captured output is never one that a later in-place operation (VGG's ReLU(inplace=True))
overwrites: in a model with in-place modules, the forward goes on with a copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from vital.errors import VitalError, closest
from vital.layout import Layout, LayoutProbe, channel_count, from_shape, to_map, to_positions


class _Stop(Exception):
    """Raised by the hook of the deepest layer so that nothing after it runs."""


VIEWS = ("positions", "map", "raw")


def as_channels_by_positions(t: torch.Tensor, layout: Layout | None = None) -> torch.Tensor:
    """(B, C, P) view of a layer output in `layout` (None: read off the shape, channels-first when it cannot tell)."""
    return to_positions(t, layout or from_shape(tuple(t.shape)) or Layout.CHANNELS_FIRST)


def has_inplace(model: nn.Module) -> bool:
    """Whether some module of `model` overwrites its input (ReLU(inplace=True) and the like)."""
    return any(getattr(m, "inplace", False) is True for m in model.modules())


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
    """Runs `model` on a batch and returns the outputs of `layers` in `view` ("positions", "map" or "raw"; see the
    module docstring), skipping everything after the last of them to execute. `layouts` holds each layer's layout
    after the first call."""

    def __init__(self, model: nn.Module, layers: Sequence[str], view: str = "positions", stop_early: bool = True):
        if not layers:
            raise VitalError("no layers to capture")
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        self.model = model
        self.layers = list(dict.fromkeys(layers))
        self.modules = resolve_modules(model, self.layers)
        self.view = view
        self.stop_early = stop_early
        self.copy = has_inplace(model)
        self.layouts: dict[str, Layout] = {}

    def _view(self, name: str, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.view == "raw":
            return out
        layout = self.layouts.get(name)
        if layout is None:
            layout = self.layouts[name] = LayoutProbe.layout(self.model, name, tuple(out.shape), x)
        return to_positions(out, layout) if self.view == "positions" else to_map(out, layout, name)

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}
        wanted = set(self.layers)

        def make_hook(name: str):
            def hook(_m: nn.Module, _inp, out):
                if name in captured:
                    return None  # a module called twice (shared activation): keep its first use
                if isinstance(out, (tuple, list)):
                    out = out[0]
                if not torch.is_tensor(out):
                    raise VitalError(f"layer '{name}' returns {type(out).__name__}, not a tensor; pick another layer")
                captured[name] = out
                if self.stop_early and wanted.issubset(captured):
                    raise _Stop
                return out.clone() if self.copy else None  # an in-place op downstream then changes the copy

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
        return {n: self._view(n, captured[n], x) for n in self.layers}


class LayerRow(NamedTuple):
    name: str
    kind: str  # the module's type name
    shape: tuple[int, ...]  # of the output, batch first
    layout: Layout

    @property
    def channels(self) -> int:
        return channel_count(self.shape, self.layout)


def layer_table(model: nn.Module, x: torch.Tensor, outputs: dict[str, torch.Tensor] | None = None) -> list[LayerRow]:
    """A row (name, type, output shape, layout) for every named module that returns a tensor, in execution order.
    `outputs`, when given, receives every output (kept alive, so that shared storage means one tensor)."""
    found: list[tuple[str, str, tuple[int, ...]]] = []
    seen: set[str] = set()

    def make_hook(name: str):
        def hook(m: nn.Module, _inp, out) -> None:
            if name in seen:
                return
            seen.add(name)
            if isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
                out = out[0]
            if torch.is_tensor(out) and out.dim() >= 2:
                shape = tuple(out.shape)
                if outputs is not None:
                    outputs[name] = out
                found.append((name, type(m).__name__, shape))

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [LayerRow(n, kind, shape, LayoutProbe.layout(model, n, shape, x)) for n, kind, shape in found]


def upstream_of(model: nn.Module, target: str, candidates: Sequence[str], size: int = 224,
                rows: Sequence[LayerRow] | None = None) -> list[str]:
    """The candidates whose output is complete before the target's output is, in the given order (the execution
    order of one forward at `size` px, or of `rows` from `layer_table`). The target itself and the containers that
    hold it are not upstream: only these layers can be weighted by the target's relevance (docs/concepts/relevance.md)."""
    resolve_modules(model, [target, *candidates])
    if rows is None:
        p = next(model.parameters(), None)
        x = torch.zeros(1, 3, size, size, device=p.device if p is not None else "cpu",
                        dtype=p.dtype if p is not None else torch.float32)
        rows = layer_table(model, x)
    order = {row.name: i for i, row in enumerate(rows)}
    if target not in order:
        raise VitalError(f"target layer '{target}' does not return a tensor in the forward pass")
    return [n for n in candidates if n in order and order[n] < order[target] and not target.startswith(n + ".")]
