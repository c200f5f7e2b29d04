"""The execution chain of a model: its operations in forward order, each with its LRP rule.

Plain `nn.Sequential` containers (including subclasses that keep Sequential's forward, such as torchvision's
Conv2dNormActivation and _Transition) are descended into; model roots with their own forward (ResNet, DenseNet, VGG,
MobileNetV2, EfficientNet-Lite) are listed by a per-family builder; residual and dense blocks are single steps with
their own rules. Every step carries the dotted names whose output it produces: a leaf's own name and the names of the
containers it ends (`layer4` ends with `layer4.2`). The chain is built once per engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import densenet, mobilenetv2, resnet, vgg

from vital.errors import VitalError
from vital.relevance.rules import (
    AdaptivePool,
    Conv,
    DenseBlock,
    Flatten,
    Linear,
    Pad,
    Pass,
    Pool,
    Residual,
    Serial,
    Step,
)

SUPPORTED = ("torchvision ResNet, DenseNet, VGG and MobileNetV2, EfficientNet-Lite, and nn.Sequential stacks of "
             "Conv2d, Linear, BatchNorm, ReLU/ReLU6/SiLU, Dropout, padding and pooling")


class Unsupported(Step):
    """Placeholder for a module without a rule: an error only if the relevance has to pass through it."""

    def __init__(self, name: str, module: nn.Module):
        self.name, self.type_name = name, type(module).__name__

    def error(self) -> VitalError:
        return VitalError(f"LRP has no rule for module type '{self.type_name}' (layer '{self.name}'); supported: "
                          f"{SUPPORTED}. Use method='guided-backprop' for this model.")


@dataclass
class Chain:
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


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _keeps_forward(m: nn.Module, base: type) -> bool:
    return isinstance(m, base) and type(m).forward is base.forward


def _leaf(name: str, m: nn.Module) -> Step | None:
    """The rule of a single-operation module, or None when `m` is not one."""
    if _keeps_forward(m, nn.Conv2d):
        if m.padding_mode != "zeros":
            raise VitalError(f"LRP has no rule for Conv2d with padding_mode='{m.padding_mode}' (layer '{name}'); "
                             "use method='guided-backprop' for this model")
        return Conv(name, m)
    if _keeps_forward(m, nn.Linear):
        return Linear(name, m)
    if _keeps_forward(m, nn.modules.batchnorm._BatchNorm):
        return Pass(name, m, False)
    if _keeps_forward(m, nn.ReLU):
        return Pass(name, F.relu, True)
    if _keeps_forward(m, nn.ReLU6):
        return Pass(name, F.relu6, True)
    if _keeps_forward(m, nn.SiLU):
        return Pass(name, F.silu, False)
    if isinstance(m, nn.modules.dropout._DropoutNd) or _keeps_forward(m, nn.Identity):
        return Pass(name, m, None)
    if _keeps_forward(m, nn.ZeroPad2d):
        return Pad(name, m.padding)
    if _keeps_forward(m, nn.MaxPool2d) and not m.return_indices and m.dilation in (1, (1, 1)):
        return Pool(name, m, m.kernel_size, m.stride, m.padding, m.ceil_mode)
    if _keeps_forward(m, nn.AvgPool2d):
        return Pool(name, m, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override)
    if _keeps_forward(m, nn.AdaptiveAvgPool2d):
        return AdaptivePool(name, m.output_size)
    if _keeps_forward(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
        return Flatten(name)
    return _lite_leaf(name, m)


def expand(chain: Chain, name: str, m: nn.Module) -> None:
    """Append the steps of module `m` (named `name`) to `chain`."""
    start = len(chain.steps)
    step = _leaf(name, m)
    if step is not None:
        chain.add(step, name)
    elif type(m) in _BUILDERS:
        _BUILDERS[type(m)](chain, name, m)
    elif _keeps_forward(m, nn.Sequential):
        for child, sub in m.named_children():
            expand(chain, _join(name, child), sub)
    else:
        step = Unsupported(name, m)
        chain.add(step, name)
        chain.blocks[name] = step
    if name and len(chain.steps) > start and name not in chain.names[-1]:
        chain.names[-1].append(name)


def steps_of(prefix: str, pairs: list[tuple[str, nn.Module]]) -> list[Step]:
    """The steps of a block's inner modules, in the given order (their names are not capture points)."""
    sub = Chain()
    for child, m in pairs:
        expand(sub, _join(prefix, child), m)
    bad = [s for s in sub.steps if isinstance(s, Unsupported)]
    if bad:
        raise bad[0].error()
    return sub.steps


def _block(chain: Chain, name: str, step: Step) -> None:
    chain.add(step, name)
    chain.blocks[name] = step


# ---- torchvision families ------------------------------------------------------------------------------------------

def _resnet_block(chain: Chain, name: str, m: nn.Module) -> None:
    if isinstance(m, resnet.Bottleneck):
        order = ["conv1", "bn1", "relu", "conv2", "bn2", "relu", "conv3", "bn3"]
    else:
        order = ["conv1", "bn1", "relu", "conv2", "bn2"]
    branch = steps_of(name, [(c, getattr(m, c)) for c in order])
    shortcut = steps_of(name, [("downsample", m.downsample)]) if m.downsample is not None else []
    _block(chain, name, Residual(name, branch, shortcut, steps_of(name, [("relu", m.relu)])))


def _resnet(chain: Chain, name: str, m: nn.Module) -> None:
    for child in ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]:
        expand(chain, _join(name, child), getattr(m, child))
    chain.add(Flatten(), None)
    expand(chain, _join(name, "fc"), m.fc)


def _vgg(chain: Chain, name: str, m: nn.Module) -> None:
    expand(chain, _join(name, "features"), m.features)
    expand(chain, _join(name, "avgpool"), m.avgpool)
    chain.add(Flatten(), None)
    expand(chain, _join(name, "classifier"), m.classifier)


def _densenet(chain: Chain, name: str, m: nn.Module) -> None:
    expand(chain, _join(name, "features"), m.features)
    chain.add(Pass(None, F.relu, True), None)
    chain.add(AdaptivePool(None, (1, 1)), None)
    chain.add(Flatten(), None)
    expand(chain, _join(name, "classifier"), m.classifier)


def _dense_block(chain: Chain, name: str, m: nn.Module) -> None:
    order = ["norm1", "relu1", "conv1", "norm2", "relu2", "conv2"]  # _DenseLayer.forward; its dropout is train-only
    layers = [steps_of(_join(name, ln), [(c, getattr(layer, c)) for c in order]) for ln, layer in m.items()]
    _block(chain, name, DenseBlock(name, layers))


def _mobilenet_v2(chain: Chain, name: str, m: nn.Module) -> None:
    expand(chain, _join(name, "features"), m.features)
    chain.add(AdaptivePool(None, (1, 1)), None)
    chain.add(Flatten(), None)
    expand(chain, _join(name, "classifier"), m.classifier)


def _inverted_residual(chain: Chain, name: str, m: nn.Module) -> None:
    if m.use_res_connect:
        _block(chain, name, Residual(name, steps_of(name, [("conv", m.conv)]), [], []))
    else:
        expand(chain, _join(name, "conv"), m.conv)


_BUILDERS: dict[type, Callable[[Chain, str, nn.Module], None]] = {
    resnet.ResNet: _resnet,
    resnet.BasicBlock: _resnet_block,
    resnet.Bottleneck: _resnet_block,
    vgg.VGG: _vgg,
    densenet.DenseNet: _densenet,
    densenet._DenseBlock: _dense_block,
    mobilenetv2.MobileNetV2: _mobilenet_v2,
    mobilenetv2.InvertedResidual: _inverted_residual,
}


# ---- EfficientNet-Lite (efficientnet_lite_pytorch) -----------------------------------------------------------------

try:
    from efficientnet_lite_pytorch import model as _lite_model
    from efficientnet_lite_pytorch import utils as _lite_utils
except ImportError:  # optional family
    _lite_model = _lite_utils = None


def _lite_leaf(name: str, m: nn.Module) -> Step | None:
    if _lite_utils is None:
        return None
    if type(m) is _lite_utils.Conv2dStaticSamePadding:
        pad = m.static_padding.padding if isinstance(m.static_padding, nn.ZeroPad2d) else None
        return Conv(name, m, pre_pad=pad)
    if type(m) in (_lite_utils.Swish, _lite_utils.MemoryEfficientSwish):
        return Pass(name, m, False)
    if type(m) is _lite_utils.Identity:
        return Pass(name, m, None)
    return None


def _se_gate(block: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """MBConvBlock's squeeze-and-excitation as a function of x; the gate is a constant factor for relevance."""

    def gate(x: torch.Tensor) -> torch.Tensor:
        g = block._se_expand(block._swish(block._se_reduce(F.adaptive_avg_pool2d(x, 1))))
        return torch.sigmoid(g) * x

    return gate


def _mbconv(chain: Chain, name: str, m: nn.Module) -> None:
    sub = []
    if m._block_args.expand_ratio != 1:
        sub += steps_of(name, [("_expand_conv", m._expand_conv), ("_bn0", m._bn0), ("_swish", m._swish)])
    sub += steps_of(name, [("_depthwise_conv", m._depthwise_conv), ("_bn1", m._bn1), ("_swish", m._swish)])
    if m.has_se:
        sub.append(Pass(_join(name, "_se_expand"), _se_gate(m), None))
    sub += steps_of(name, [("_project_conv", m._project_conv), ("_bn2", m._bn2)])
    args = m._block_args
    # the block's own test, verbatim: a list-valued stride such as [1] does not count as 1
    if m.id_skip and args.stride == 1 and args.input_filters == args.output_filters:
        _block(chain, name, Residual(name, sub, [], []))
    else:
        _block(chain, name, Serial(name, sub))


def _efficientnet(chain: Chain, name: str, m: nn.Module) -> None:
    for child in ["_conv_stem", "_bn0", "_swish"]:
        expand(chain, _join(name, child), getattr(m, child))
    for i, block in enumerate(m._blocks):
        expand(chain, _join(name, f"_blocks.{i}"), block)
    chain.names[-1].append(_join(name, "_blocks"))
    for child in ["_conv_head", "_bn1", "_swish", "_avg_pooling"]:
        expand(chain, _join(name, child), getattr(m, child))
    chain.add(Flatten(), None)
    expand(chain, _join(name, "_dropout"), m._dropout)
    expand(chain, _join(name, "_fc"), m._fc)


if _lite_model is not None:
    _BUILDERS[_lite_model.EfficientNet] = _efficientnet
    _BUILDERS[_lite_model.MBConvBlock] = _mbconv


def build_chain(model: nn.Module) -> Chain:
    chain = Chain()
    expand(chain, "", model)
    return chain
