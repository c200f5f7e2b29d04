"""Capture named layer outputs in one forward that stops after the deepest of them.

`capture` is the one forward-hook helper that captures and stops early (used by `FeatureExtractor`, the
modified-gradient relevance and guided backprop); `LayoutProbe` reads a layer's layout where its shape cannot tell.
`FeatureExtractor` outputs are returned in one of the views of `vital.layout`, by each layer's own layout: "positions" (B, C, P):
C channels by P positions (a channels-first or channels-last map gives P = H*W; a ViT token sequence (B, T, D)
gives D channels by T tokens, class token included; a vector gives P = 1); "map" (B, C, H, W); or "raw" (as the
layer returned it). A captured output is never one that a later in-place operation (VGG's ReLU(inplace=True))
overwrites: in a model with in-place modules, the forward goes on with a copy.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from vital.errors import VitalError, closest
from vital.layout import Layout, channel_count, from_shape, to_map, to_positions


class _Stop(Exception):
    """Raised by a capture hook so that nothing after the last layer needed runs."""


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


def capture(model: nn.Module, x: torch.Tensor, modules: dict[str, nn.Module], *,
            until: tuple[str, nn.Module] | None = None, stop_early: bool = True, copy: bool = False,
            first_of_sequence: bool = False, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None
            ) -> dict[str, torch.Tensor]:
    """One forward of `model` on `x` with the outputs of `modules` (name -> module) captured, each module's first
    use only. The forward stops once the layer `until` (name, module) has run, which is captured too; without
    `until` and with `stop_early`, once every layer has. A layer that did not run is missing from the result.

    `copy`: the forward goes on with a copy of each captured output, so that a later in-place operation (VGG's
    ReLU(inplace=True)) cannot overwrite it. `first_of_sequence`: a module returning a tuple or list is read as its
    first element (else a non-tensor output is an error). `prepare`: applied to the outputs of `modules` (not to
    `until`'s alone); the forward goes on with what it returns (the modified-gradient rules make a leaf there)."""
    captured: dict[str, torch.Tensor] = {}
    by_module: dict[int, tuple[nn.Module, list[str]]] = {}
    for n, m in [*modules.items(), *([until] if until is not None else [])]:
        names = by_module.setdefault(id(m), (m, []))[1]
        if n not in names:
            names.append(n)
    wanted = set(modules)
    last = until[0] if until is not None else None

    def hook_for(names: list[str]):
        def hook(_m: nn.Module, _inp, out):
            whole = out
            if first_of_sequence and isinstance(out, (tuple, list)):
                out = out[0]
            if not torch.is_tensor(out):
                raise VitalError(f"layer '{names[0]}' returns {type(out).__name__}, not a tensor; pick another layer")
            new = out
            if names[0] not in captured:  # a module called twice (a shared activation): its first use counts
                if prepare is not None and any(n in wanted for n in names):
                    new = prepare(out)
                for n in names:
                    captured[n] = new
                if last in names or (last is None and stop_early and wanted.issubset(captured)):
                    raise _Stop
            if copy:
                new = new.clone()
            if new is out:
                return None
            return type(whole)((new, *whole[1:])) if whole is not out else new

        return hook

    handles = [m.register_forward_hook(hook_for(names)) for m, names in by_module.values()]
    try:
        model(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured


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
        self.shapes: dict[str, tuple[int, ...]] = {}  # each layer's raw output shape at the last call

    def _view(self, name: str, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.shapes[name] = tuple(out.shape)
        if self.view == "raw":
            return out
        layout = self.layouts.get(name)
        if layout is None:
            layout = self.layouts[name] = LayoutProbe.layout(self.model, name, tuple(out.shape), x)
        return to_positions(out, layout) if self.view == "positions" else to_map(out, layout, name)

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        captured = capture(self.model, x, self.modules, stop_early=self.stop_early, copy=self.copy,
                           first_of_sequence=True)
        missing = [n for n in self.layers if n not in captured]
        if missing:
            raise VitalError(f"layers {missing} did not run in the forward pass; pick layers the model uses")
        return {n: self._view(n, captured[n], x) for n in self.layers}


class LayoutProbe:
    """Layouts of a module's layers, resolved once per module and input size: read off the output's shape
    (`vital.layout.from_shape`), and where that cannot tell (as many channels as rows and columns), probed once
    at another input size (no gradient, batch 1): the dimensions that change are spatial."""

    _cache: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, tuple[int, ...]], Layout]] = weakref.WeakKeyDictionary()

    @classmethod
    def layout(cls, module: nn.Module, name: str, shape: tuple[int, ...], x: torch.Tensor) -> Layout:
        """The layout of `name`'s output of `shape` for the input `x` (B, 3, H, W)."""
        known = from_shape(shape)
        if known is not None:
            return known
        table = cls._cache.setdefault(module, {})
        key = (name, tuple(shape[1:]))
        if key not in table:
            table[key] = cls._probe(module, name, shape, x)
        return table[key]

    @staticmethod
    def _probe(module: nn.Module, name: str, shape: tuple[int, ...], x: torch.Tensor) -> Layout:
        side = x.shape[-1] + 32  # a multiple of 32 more keeps every stride of the usual backbones whole
        probe = torch.zeros(1, 3, side, side, device=x.device, dtype=x.dtype)
        try:
            with torch.no_grad():
                other = FeatureExtractor(module, [name], view="raw")(probe)[name].shape
        except Exception:  # a model that takes one input size only: keep the convention
            return Layout.CHANNELS_FIRST
        if len(other) == 4 and other[1] != shape[1] and other[3] == shape[3]:
            return Layout.CHANNELS_LAST
        return Layout.CHANNELS_FIRST


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
