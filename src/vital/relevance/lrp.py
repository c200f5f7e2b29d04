"""Relevance of one target channel per sample, captured at named layers (arXiv 2503.22399, method section; docs/concepts/relevance.md).

`RelevanceEngine` analyses the model once: it builds the execution chain up to the target layer, assigns a rule to
every step and resolves the requested layers by name. A call is one forward of the truncated network that keeps
what the rules need, then one backward relevance pass that stops at the shallowest requested layer. Nothing builds
an autograd graph through the model: the results are detached, non-negative and have the shapes of the layer outputs.

Methods:
- "lrp": the start is the whole activation map of channel c_b, A[b, c_b] (clamped at 0: a block output without a
  final ReLU, as in MobileNetV2 or EfficientNet-Lite, can be negative), zero elsewhere.
- "lrp-restricted": the start is 1 at the single position (h*, w*) where channel c_b is most aligned with the
  activation vector, argmax A[b, c_b, h, w] / ||A[b, :, h, w]||, zero elsewhere.
- "guided-backprop": ReLU of the guided gradient of the channel's spatial mean (see `vital.relevance.guided`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from vital.errors import VitalError, closest
from vital.layout import Layout
from vital.relevance import readout
from vital.relevance.blocks import configure, propagate_chain
from vital.relevance.chains import Chain, Unsupported, build_chain
from vital.relevance.guided import guided_backprop
from vital.relevance.modified_gradient import ModifiedGradientRelevance
from vital.relevance.readout import Readout, as_readout
from vital.relevance.rules import EPS

METHODS = ("lrp", "lrp-restricted", "guided-backprop")


def _locate(chain: Chain, index: dict[str, int], modules: dict[str, nn.Module], name: str, what: str,
            guided: bool = False) -> int | None:
    """Step index producing `name`; None where only guided backprop can use it (position checked at run time)."""
    if name in index:
        return index[name]
    if name not in modules or not name:
        raise VitalError(f"model has no {what} '{name}'.{closest(name, [k for k in modules if k])} "
                         "`vital layers MODEL` lists them.")
    block = next((b for b in chain.blocks if not b or name.startswith(b + ".")), None)
    if guided:
        return None
    unsupported = chain.blocks.get(block) if block is not None else None
    if isinstance(unsupported, Unsupported):
        raise unsupported.error()
    if block is not None:
        raise VitalError(f"{what} '{name}' is inside block '{block}', whose relevance is computed as a whole: "
                         f"use '{block}' instead")
    raise VitalError(f"{what} '{name}' is not on the model's execution chain.{closest(name, list(index))} "
                     "Pick one of those.")


NON_RELU = (nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.ELU, nn.SELU, nn.CELU, nn.LeakyReLU, nn.PReLU, nn.Softplus,
            nn.Tanh, nn.MultiheadAttention)


def check_guided(model: nn.Module) -> None:
    """Guided backprop is defined by its ReLUs: a network with other activations would get a clamped gradient."""
    others = sorted({type(m).__name__ for m in model.modules() if isinstance(m, NON_RELU)})
    if others or not any(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in model.modules()):
        found = f"its activations include {', '.join(others)}" if others else "it has no nn.ReLU modules"
        raise VitalError(f"guided backprop needs a ReLU network and {found}; use relevance='lrp' or 'none'")


class RelevanceEngine:
    """Relevance maps of a target channel at `layers`, for a batch with one channel per sample.

    For the LRP methods the rule chain (z+ with BatchNorm folding, relevance splitting at residual joins) is used
    where it lists every module from the target back to the shallowest layer; any other model (transformers,
    ConvNeXt, CNN families without a chain entry) gets the modified-gradient rules of
    `vital.relevance.modified_gradient`, announced in a one-line note. `backend` says which: "chain",
    "modified-gradient" or "guided"."""

    def __init__(self, model: nn.Module, target_layer: str, layers: Sequence[str], method: str = "lrp", *,
                 eps: float = EPS, fold_batchnorm: bool = True, conserve: bool = True):
        """`eps`: the stabiliser of every rule. `fold_batchnorm`: fold each BatchNorm that follows a convolution
        into that convolution's z+ rule (canonization); without it BatchNorm passes relevance unchanged, as the
        authors' code does. `conserve`: where a convolution's output has no positive contribution (z+ = 0: a
        filter whose weights are all negative on non-negative inputs), its relevance goes back by the w^2 rule
        instead of being dropped (the authors' code, and plain z+, drop it)."""
        if method not in METHODS:
            raise VitalError(f"unknown relevance method '{method}'; use one of {', '.join(METHODS)}")
        if isinstance(layers, str) or not layers:
            raise VitalError("give the layers to capture relevance at as a list of names, e.g. ['layer3', 'layer2']")
        self.model, self.target_layer, self.method = model, target_layer, method
        self.layers = list(dict.fromkeys(layers))
        self._modules = dict(model.named_modules())
        self._mode_sensitive = [m for m in model.modules()
                                if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd))]
        self.fallback: ModifiedGradientRelevance | None = None
        chain = build_chain(model)
        index = chain.index()
        guided = method == "guided-backprop"
        if guided:
            check_guided(model)
        try:
            target = _locate(chain, index, self._modules, target_layer, "target layer", guided)
            positions = {n: _locate(chain, index, self._modules, n, "layer", guided) for n in self.layers}
            steps = chain.steps[:target + 1] if target is not None else []
            bad = [s for s in steps if isinstance(s, Unsupported)]
            if bad:
                raise bad[0].error()
        except VitalError as e:
            if guided or target_layer not in self._modules or any(n not in self._modules for n in self.layers):
                raise
            self.backend = "modified-gradient"
            self.fallback = ModifiedGradientRelevance(model, target_layer, self.layers, method)
            _announce(model, str(e))
            return
        if target is not None:
            for n, i in positions.items():
                if i is not None and i > target:
                    raise VitalError(f"layer '{n}' comes after the target layer '{target_layer}'; relevance reaches "
                                     f"only layers upstream of the target: drop '{n}' or pick a deeper target")
        if guided:
            self.backend = "guided"
            # hook the module that produces each output (`layer4` is produced by `layer4.2`)
            canon = {n: chain.names[i][0] if i is not None else n for n, i in positions.items()}
            self._guided_layers = {n: self._modules[c] for n, c in canon.items()}
            tname = chain.names[target][0] if target is not None else target_layer
            self._guided_target = (target_layer, self._modules[tname])
            return
        assert target is not None and all(i is not None for i in positions.values())  # only guided gets None
        self.backend = "chain"
        self.steps = steps
        propagate_chain(self.steps, False)
        self.folded = configure(self.steps, eps, fold_batchnorm, conserve)
        self.target_index: int = target
        at = {n: int(i) for n, i in positions.items() if i is not None}
        self.stop: int = min(at.values())
        self.capture: dict[int, list[str]] = {}
        for n, i in at.items():
            self.capture.setdefault(i, []).append(n)

    def _check_mode(self) -> None:
        if any(m.training for m in self._mode_sensitive):
            raise VitalError("the model is in training mode (BatchNorm/Dropout would mix or drop samples); "
                             "call model.eval() first")

    def _check_range(self, a: torch.Tensor, units: Readout, layout: Layout | None = None) -> None:
        if a.dim() not in (2, 3, 4):
            raise VitalError(f"target layer '{self.target_layer}' has output shape {tuple(a.shape)}; relevance "
                             "needs a map, a token sequence or a vector")
        readout.check(units, tuple(a.shape), layout or _chain_layout(a), self.target_layer)

    def __call__(self, x: torch.Tensor, channels: Readout | torch.Tensor | int) -> dict[str, torch.Tensor]:
        """{layer: relevance shaped like that layer's output} for x (B, 3, H, W) and one unit per sample: a
        channel (an int for all, or a tensor), or a `Readout` (a channel at a position, a direction)."""
        self._check_mode()
        ch = as_readout(channels, x.shape[0], x.device)
        if self.fallback is not None:
            return self.fallback(x, ch, self._check_range)
        if self.method == "guided-backprop":
            return guided_backprop(self.model, x, ch, self._guided_target, self._guided_layers, self._check_range)
        with torch.no_grad():
            h, ctxs, _ = self._forward(x.detach())
            return self._relevance(h, ctxs, ch)

    def features_and_relevance(self, x: torch.Tensor, channels: Readout | torch.Tensor | int
                               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One forward for both: the outputs of `layers` with their autograd graph to `x` (for a loss), and the
        relevance maps (detached). Saves the separate feature forward that an optimisation step would otherwise
        run; for "guided-backprop", which needs a backward of its own, use `__call__`."""
        if self.method == "guided-backprop" or self.fallback is not None:
            raise VitalError("features_and_relevance needs the LRP rule chain; call the engine for the relevance")
        self._check_mode()
        ch = as_readout(channels, x.shape[0], x.device)
        h, ctxs, feats = self._forward(x, grad_until=max(self.capture))
        with torch.no_grad():
            return feats, self._relevance(h, ctxs, ch)

    def _forward(self, x: torch.Tensor, grad_until: int = -1):
        """Run the chain to the target, keeping what the rules need; steps up to `grad_until` build a graph."""
        feats: dict[str, torch.Tensor] = {}
        h, ctxs = x, []
        for i, step in enumerate(self.steps):
            with torch.set_grad_enabled(i <= grad_until and torch.is_grad_enabled()):
                h, ctx = step.forward(h, keep=i > self.stop)
            ctxs.append(ctx)
            for n in self.capture.get(i, ()):
                feats[n] = h
        return h, ctxs, feats

    def _relevance(self, h: torch.Tensor, ctxs: list, ch: Readout) -> dict[str, torch.Tensor]:
        """The backward relevance pass from the target output `h`, through the kept contexts (call under no_grad)."""
        out: dict[str, torch.Tensor] = {}
        h = h.detach()
        self._check_range(h, ch)
        r = readout.start(h, ch, _chain_layout(h), self.method)
        for i in range(self.target_index, self.stop - 1, -1):
            for n in self.capture.get(i, ()):
                out[n] = r
            if i > self.stop:
                r = self.steps[i].relevance(r, ctxs[i])
                ctxs[i] = None  # free what this step kept as soon as it is used
        return {n: out[n] for n in self.layers}


def _chain_layout(a: torch.Tensor) -> Layout:
    """The rule chain runs CNN families: channels-first maps, or vectors after the pooling."""
    return Layout.VECTOR if a.dim() == 2 else Layout.CHANNELS_FIRST


_ANNOUNCED: set[tuple[str, str]] = set()


def _announce(model: nn.Module, reason: str) -> None:
    """One line per model type and reason: which rules are used, and why not the chain's."""
    key = (type(model).__name__, reason)
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        why = reason.split(";")[0].split(". ")[0]
        warnings.warn(f"relevance for {type(model).__name__} by the modified-gradient LRP rules (z+ convolutions, "
                      f"constant attention weights and normalisation scale, identity rule for GELU/SiLU); the rule "
                      f"chain does not apply: {why}", stacklevel=3)


def relevance_maps(model: nn.Module, x: torch.Tensor, target_layer: str, channels: torch.Tensor | int,
                   layers: Sequence[str], method: str = "lrp") -> dict[str, torch.Tensor]:
    """One-shot `RelevanceEngine(model, target_layer, layers, method)(x, channels)`; build an engine to reuse it."""
    return RelevanceEngine(model, target_layer, layers, method)(x, channels)
