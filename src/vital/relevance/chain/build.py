"""The execution chain of a model: its operations in forward order, each with its LRP rule.

Which rule a single-operation module gets is looked up in type-to-rule tables (`BASIC_LEAF_RULES` here, the
families' own in `vital.relevance.chain.families`; extendable: pass `leaf_rules` to `build_chain`, as zennit's
layer-map composites take one); modules whose forward is more than one operation (model roots, residual and dense
blocks) are listed by block builders, which `build_chain` is given (the families', for the default chain). Plain
`nn.Sequential` containers (including subclasses that keep Sequential's forward, such as torchvision's
Conv2dNormActivation and _Transition) are descended into. Every step carries the dotted names whose output it
produces: a leaf's own name and the names of the containers it ends (`layer4` ends with `layer4.2`). The chain is
built once per engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import nn

from vital.errors import VitalError
from vital.relevance.chain.rules import AdaptivePool, Conv, Flatten, Linear, Pad, Pass, Pool, Step

SUPPORTED = ("torchvision ResNet, DenseNet, VGG and MobileNetV2, EfficientNet-Lite, and nn.Sequential stacks of "
             "Conv2d, Linear, BatchNorm, ReLU/ReLU6/SiLU, Dropout, padding and pooling")


class Unsupported(Step):
    """Placeholder for a module without a rule: an error only if the relevance has to pass through it."""

    def __init__(self, name: str, module: nn.Module):
        self.name, self.type_name = name, type(module).__name__

    @property
    def reason(self) -> str:
        where = f"layer '{self.name}'" if self.name else "the model itself"
        return f"LRP has no rule for module type '{self.type_name}' ({where})"

    def error(self) -> VitalError:
        return VitalError(f"{self.reason}; supported: {SUPPORTED}. Use relevance='guided-backprop' (or 'none') for "
                          "this model.")


LeafRule = Callable[[str, Any], Step]  # modules are duck-typed: a rule reads the attributes it needs
BlockBuilder = Callable[["Chain", str, nn.Module], None]  # appends the steps of one module type


@dataclass
class Chain:
    """The steps of a model (or block) in forward order, and the tables they were built with."""

    leaf_rules: Sequence[tuple[type, LeafRule]]
    builders: dict[type, BlockBuilder]
    steps: list[Step] = field(default_factory=list)
    names: list[list[str]] = field(default_factory=list)  # names whose output is the output of steps[i]
    blocks: dict[str, Step] = field(default_factory=dict)  # steps whose inner modules are not on the chain

    def add(self, step: Step, name: str | None) -> None:
        self.steps.append(step)
        self.names.append([name] if name else [])

    def index(self) -> dict[str, int]:
        """Name -> index of the step producing it; a module used twice (a shared activation) keeps its first use."""
        out: dict[str, int] = {}
        for i, names in enumerate(self.names):
            for n in names:
                out.setdefault(n, i)
        return out

    def sub(self) -> Chain:
        """An empty chain with the same tables, for the inside of a block."""
        return Chain(self.leaf_rules, self.builders)


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def keeps_forward(m: nn.Module, base: type) -> bool:
    """`m` is a `base` whose forward is `base`'s own (a subclass with another forward gets no rule of `base`)."""
    return isinstance(m, base) and getattr(type(m), "forward", None) is getattr(base, "forward", None)


def _conv(name: str, m: Any) -> Step:
    if m.padding_mode != "zeros":
        raise VitalError(f"LRP has no rule for Conv2d with padding_mode='{m.padding_mode}' (layer '{name}'); "
                         "use relevance='guided-backprop' for this model")
    return Conv(name, m)


def _max_pool(name: str, m: Any) -> Step:
    if m.return_indices or m.dilation not in (1, (1, 1)):
        raise VitalError(f"LRP has no rule for MaxPool2d with indices or dilation (layer '{name}')")
    return Pool(name, m, m.kernel_size, m.stride, m.padding, m.ceil_mode)


def _flatten(name: str, m: Any) -> Step:
    if (m.start_dim, m.end_dim) != (1, -1):
        raise VitalError(f"LRP has no rule for Flatten({m.start_dim}, {m.end_dim}) (layer '{name}')")
    return Flatten(name)


# type -> rule of a module that is one operation, matched in order by `keeps_forward` (dropout: any subclass)
BASIC_LEAF_RULES: list[tuple[type, LeafRule]] = [
    (nn.Conv2d, _conv),
    (nn.Linear, Linear),
    (nn.modules.batchnorm._BatchNorm, lambda n, m: Pass(n, m, False)),
    (nn.ReLU, lambda n, m: Pass(n, F.relu, True)),
    (nn.ReLU6, lambda n, m: Pass(n, F.relu6, True)),
    (nn.SiLU, lambda n, m: Pass(n, F.silu, False)),
    (nn.Identity, lambda n, m: Pass(n, m, None)),
    (nn.ZeroPad2d, lambda n, m: Pad(n, m.padding)),
    (nn.MaxPool2d, _max_pool),
    (nn.AvgPool2d, lambda n, m: Pool(n, m, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                                     m.divisor_override)),
    (nn.AdaptiveAvgPool2d, lambda n, m: AdaptivePool(n, m.output_size)),
    (nn.Flatten, _flatten),
]


def _leaf(chain: Chain, name: str, m: nn.Module) -> Step | None:
    """The rule of a single-operation module, or None when `m` is not one."""
    if isinstance(m, nn.modules.dropout._DropoutNd):
        return Pass(name, m, None)
    for typ, rule in chain.leaf_rules:
        if keeps_forward(m, typ) or type(m) is typ:
            return rule(name, m)
    return None


def expand(chain: Chain, name: str, m: nn.Module) -> None:
    """Append the steps of module `m` (named `name`) to `chain`."""
    start = len(chain.steps)
    step = _leaf(chain, name, m)
    if step is not None:
        chain.add(step, name)
    elif type(m) in chain.builders:
        chain.builders[type(m)](chain, name, m)
    elif keeps_forward(m, nn.Sequential):
        for child, sub in m.named_children():
            expand(chain, join(name, child), sub)
    else:
        step = Unsupported(name, m)
        chain.add(step, name)
        chain.blocks[name] = step
    if name and len(chain.steps) > start and name not in chain.names[-1]:
        chain.names[-1].append(name)


def steps_of(chain: Chain, prefix: str, pairs: list[tuple[str, nn.Module]]) -> list[Step]:
    """The steps of a block's inner modules, in the given order (their names are not capture points)."""
    sub = chain.sub()
    for child, m in pairs:
        expand(sub, join(prefix, child), m)
    bad = [s for s in sub.steps if isinstance(s, Unsupported)]
    if bad:
        raise bad[0].error()
    return sub.steps


def add_block(chain: Chain, name: str, step: Step) -> None:
    chain.add(step, name)
    chain.blocks[name] = step


def build_chain(model: nn.Module, leaf_rules: Sequence[tuple[type, LeafRule]],
                builders: dict[type, BlockBuilder]) -> Chain:
    """The chain of `model`: `leaf_rules` (type -> rule) are tried before `BASIC_LEAF_RULES`, `builders` list the
    steps of multi-operation modules by type."""
    chain = Chain([*leaf_rules, *BASIC_LEAF_RULES], dict(builders))
    expand(chain, "", model)
    return chain
