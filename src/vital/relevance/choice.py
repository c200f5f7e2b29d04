"""Which relevance backend runs a model, and why: `select_backend`.

Three backends compute the relevance of one target unit per sample at named layers (`RelevanceBackend`):
- the rule chain (`vital.relevance.chain`): the model's operations listed in forward order with one LRP rule each,
  for the families it knows (ResNet, VGG, DenseNet, MobileNetV2, EfficientNet-Lite, Sequential stacks); one forward
  can give the features and the relevance together (`joint_forward`);
- the modified-gradient rules (`vital.relevance.modified_gradient`, AttnLRP / CP-LRP style): any other model, and
  layers inside a block that the chain computes as a whole;
- guided backprop (`vital.relevance.guided`), when asked for.
The choice is made from the model's structure before anything runs, and said in a reason string; the
modified-gradient choice is also announced once per model type and reason (a warning).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from vital.errors import VitalError, closest
from vital.relevance.chain.backend import ChainRelevance
from vital.relevance.chain.build import Chain, Unsupported
from vital.relevance.chain.families import default_chain
from vital.relevance.guided import GuidedRelevance
from vital.relevance.modified_gradient import ModifiedGradientRelevance
from vital.relevance.readout import Readout
from vital.relevance.rule_maps import is_default, resolve_rules
from vital.relevance.zplus import EPS

ATTRIBUTION_METHODS = ("lrp", "lrp-restricted", "guided-backprop")


class RelevanceBackend(Protocol):
    """Relevance maps of a target unit at the layers it was built for, one unit per sample."""

    name: str  # "chain", "modified-gradient" or "guided": for messages and records, not for branching
    joint_forward: bool  # whether `features_and_relevance` shares one forward (else it raises)

    def __call__(self, x: torch.Tensor, units: Readout) -> dict[str, torch.Tensor]:
        """{layer: relevance shaped like that layer's output}, detached and non-negative."""
        ...

    def features_and_relevance(self, x: torch.Tensor, units: Readout
                               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The layers' outputs (with their graph to x) and the relevance, from one forward."""
        ...


@dataclass(frozen=True)
class BackendChoice:
    backend: RelevanceBackend
    reason: str  # why this backend: the method asked for, or what the rule chain covers or lacks


NON_RELU = (nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.ELU, nn.SELU, nn.CELU, nn.LeakyReLU, nn.PReLU, nn.Softplus,
            nn.Tanh, nn.MultiheadAttention)


def check_guided(model: nn.Module) -> None:
    """Guided backprop is defined by its ReLUs: a network with other activations would get a clamped gradient."""
    others = sorted({type(m).__name__ for m in model.modules() if isinstance(m, NON_RELU)})
    if others or not any(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in model.modules()):
        found = f"its activations include {', '.join(others)}" if others else "it has no nn.ReLU modules"
        raise VitalError(f"guided backprop needs a ReLU network and {found}; use relevance='lrp' or 'none'")


def _check_names(modules: dict[str, nn.Module], target_layer: str, layers: Sequence[str]) -> None:
    for name, what in [(target_layer, "target layer"), *((n, "layer") for n in layers)]:
        if name not in modules or not name:
            raise VitalError(f"model has no {what} '{name}'.{closest(name, [k for k in modules if k])} "
                             "`vital layers MODEL` lists them.")


def _off_chain(chain: Chain, index: dict[str, int], target_layer: str, layers: Sequence[str]) -> str | None:
    """Why the rule chain cannot give relevance from `target_layer` to `layers` (None: it can)."""
    for name, what in [(target_layer, "target layer"), *((n, "layer") for n in layers)]:
        if name in index:
            continue
        block = next((b for b in chain.blocks if not b or name.startswith(b + ".")), None)
        step = chain.blocks.get(block) if block is not None else None
        if isinstance(step, Unsupported):
            return step.reason
        if block is not None:
            return (f"{what} '{name}' is inside block '{block}', which the rule chain computes as a whole (name "
                    f"'{block}' to use the chain)")
        return f"{what} '{name}' is not on the model's execution chain"
    bad = [s for s in chain.steps[:index[target_layer] + 1] if isinstance(s, Unsupported)]
    return bad[0].reason if bad else None


def _check_order(positions: dict[str, int | None], target: int | None, target_layer: str) -> None:
    for n, i in positions.items():
        if target is not None and i is not None and i > target:
            raise VitalError(f"layer '{n}' comes after the target layer '{target_layer}'; relevance reaches only "
                             f"layers upstream of the target: drop '{n}' or pick a deeper target")


def _guided(model: nn.Module, modules: dict[str, nn.Module], target_layer: str, layers: list[str]) -> BackendChoice:
    """Guided backprop hooks the module producing each output (`layer4` is produced by `layer4.2`), as listed by
    the chain; a layer off the chain (inside a block) is hooked itself, its order checked when it runs."""
    chain = default_chain(model)
    index = chain.index()
    positions = {n: index.get(n) for n in layers}
    target = index.get(target_layer)
    _check_order(positions, target, target_layer)
    canon = {n: chain.names[i][0] if i is not None else n for n, i in positions.items()}
    tname = chain.names[target][0] if target is not None else target_layer
    backend = GuidedRelevance(model, (target_layer, modules[tname]), {n: modules[c] for n, c in canon.items()})
    return BackendChoice(backend, "guided backprop was asked for")


def select_backend(model: nn.Module, target_layer: str, layers: Sequence[str], method: str = "lrp", *,
                   eps: float = EPS, fold_batchnorm: bool = True, conserve: bool = True,
                   rules: str | Mapping[str, str] | None = None) -> BackendChoice:
    """The backend for `method` on `model` from `target_layer` back to `layers`, and why. For the LRP methods: the
    rule chain where it lists every module from the target back to the shallowest layer, else the
    modified-gradient rules (a layer inside a block included: the chain would have to split the block).
    `rules`: the chain's rule per layer type (`vital.relevance.rule_maps`); another than the default preset is
    refused where the chain does not run (the other backends have rules of their own)."""
    rule_map = resolve_rules(rules)
    if method not in ATTRIBUTION_METHODS:
        raise VitalError(f"unknown relevance method '{method}'; use one of {', '.join(ATTRIBUTION_METHODS)}")
    if isinstance(layers, str) or not layers:
        raise VitalError("give the layers to capture relevance at as a list of names, e.g. ['layer3', 'layer2']")
    layers = list(dict.fromkeys(layers))
    modules = dict(model.named_modules())
    if method == "guided-backprop":
        check_guided(model)
    _check_names(modules, target_layer, layers)
    if method == "guided-backprop":
        if not is_default(rule_map):
            raise VitalError("relevance rules apply to LRP, not to guided backprop; leave relevance_rules at its "
                             "default")
        return _guided(model, modules, target_layer, layers)
    chain = default_chain(model)
    index = chain.index()
    why = _off_chain(chain, index, target_layer, layers)
    if why is not None and not is_default(rule_map):
        raise VitalError(f"relevance rules {rule_map} apply to the LRP rule chain, which does not run here ({why});"
                         " leave relevance_rules at its default")
    if why is not None:
        _announce(model, why)
        return BackendChoice(ModifiedGradientRelevance(model, target_layer, layers, method),
                             f"the rule chain does not apply: {why}")
    positions = {n: index[n] for n in layers}
    _check_order(dict(positions), index[target_layer], target_layer)
    backend = ChainRelevance(chain.steps, target_layer, index[target_layer], positions, method, eps,
                             fold_batchnorm, conserve, rule_map)
    return BackendChoice(backend, "the rule chain lists every module from the target back to the shallowest layer")


_ANNOUNCED: set[tuple[str, str]] = set()


def _announce(model: nn.Module, reason: str) -> None:
    """One line per model type and reason: which rules are used, and why not the chain's."""
    key = (type(model).__name__, reason)
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        warnings.warn(f"relevance for {type(model).__name__} by the modified-gradient LRP rules (z+ convolutions, "
                      f"constant attention weights and normalisation scale, identity rule for GELU/SiLU); the rule "
                      f"chain does not apply: {reason}", stacklevel=4)
