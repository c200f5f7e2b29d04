"""Architecture specifics of the LRP chain: how the forward of each supported family (and of its blocks) is listed
as steps. Everything here is a table entry (`FAMILY_BUILDERS`: type -> block builder, `FAMILY_LEAF_RULES`: type ->
rule), so a new family is a new entry, not a new branch in the chain builder; `default_chain` builds a model's chain
with them.

torchvision: ResNet (BasicBlock, Bottleneck: relevance splitting at the residual sum), VGG, DenseNet (dense blocks),
MobileNetV2 (inverted residuals). efficientnet_lite_pytorch: EfficientNet(-Lite) and its MBConv blocks (an SE gate,
where present, is a constant factor for relevance).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import densenet, mobilenetv2, resnet, vgg

from vital.relevance.chain.blocks import DenseBlock, Residual, Serial
from vital.relevance.chain.build import (
    BlockBuilder,
    Chain,
    LeafRule,
    add_block,
    build_chain,
    expand,
    join,
    steps_of,
)
from vital.relevance.chain.rules import AdaptivePool, Conv, Flatten, Pass, Step


def _resnet_block(chain: Chain, name: str, m: Any) -> None:
    if isinstance(m, resnet.Bottleneck):
        order = ["conv1", "bn1", "relu", "conv2", "bn2", "relu", "conv3", "bn3"]
    else:
        order = ["conv1", "bn1", "relu", "conv2", "bn2"]
    branch = steps_of(chain, name, [(c, getattr(m, c)) for c in order])
    shortcut = steps_of(chain, name, [("downsample", m.downsample)]) if m.downsample is not None else []
    add_block(chain, name, Residual(name, branch, shortcut, steps_of(chain, name, [("relu", m.relu)])))


def _resnet(chain: Chain, name: str, m: Any) -> None:
    for child in ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]:
        expand(chain, join(name, child), getattr(m, child))
    chain.add(Flatten(), None)
    expand(chain, join(name, "fc"), m.fc)


def _vgg(chain: Chain, name: str, m: Any) -> None:
    expand(chain, join(name, "features"), m.features)
    expand(chain, join(name, "avgpool"), m.avgpool)
    chain.add(Flatten(), None)
    expand(chain, join(name, "classifier"), m.classifier)


def _densenet(chain: Chain, name: str, m: Any) -> None:
    expand(chain, join(name, "features"), m.features)
    chain.add(Pass(None, F.relu, True), None)
    chain.add(AdaptivePool(None, (1, 1)), None)
    chain.add(Flatten(), None)
    expand(chain, join(name, "classifier"), m.classifier)


def _dense_block(chain: Chain, name: str, m: Any) -> None:
    order = ["norm1", "relu1", "conv1", "norm2", "relu2", "conv2"]  # _DenseLayer.forward; its dropout is train-only
    layers = [steps_of(chain, join(name, ln), [(c, getattr(layer, c)) for c in order]) for ln, layer in m.items()]
    add_block(chain, name, DenseBlock(name, layers))


def _mobilenet_v2(chain: Chain, name: str, m: Any) -> None:
    expand(chain, join(name, "features"), m.features)
    chain.add(AdaptivePool(None, (1, 1)), None)
    chain.add(Flatten(), None)
    expand(chain, join(name, "classifier"), m.classifier)


def _inverted_residual(chain: Chain, name: str, m: Any) -> None:
    if m.use_res_connect:
        add_block(chain, name, Residual(name, steps_of(chain, name, [("conv", m.conv)]), [], []))
    else:
        expand(chain, join(name, "conv"), m.conv)


FAMILY_BUILDERS: dict[type, BlockBuilder] = {
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


def _lite_conv(name: str, m: Any) -> Step:
    pad = m.static_padding.padding if isinstance(m.static_padding, nn.ZeroPad2d) else None
    return Conv(name, m, pre_pad=pad)


def _se_gate(block: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """MBConvBlock's squeeze-and-excitation as a function of x; the gate is a constant factor for relevance."""

    def gate(x: torch.Tensor) -> torch.Tensor:
        g = block._se_expand(block._swish(block._se_reduce(F.adaptive_avg_pool2d(x, 1))))
        return torch.sigmoid(g) * x

    return gate


def _mbconv(chain: Chain, name: str, m: Any) -> None:
    sub = []
    if m._block_args.expand_ratio != 1:
        sub += steps_of(chain, name, [("_expand_conv", m._expand_conv), ("_bn0", m._bn0), ("_swish", m._swish)])
    sub += steps_of(chain, name, [("_depthwise_conv", m._depthwise_conv), ("_bn1", m._bn1), ("_swish", m._swish)])
    if m.has_se:
        sub.append(Pass(join(name, "_se_expand"), _se_gate(m), None))
    sub += steps_of(chain, name, [("_project_conv", m._project_conv), ("_bn2", m._bn2)])
    args = m._block_args
    # the block's own test, verbatim: a list-valued stride such as [1] does not count as 1
    if m.id_skip and args.stride == 1 and args.input_filters == args.output_filters:
        add_block(chain, name, Residual(name, sub, [], []))
    else:
        add_block(chain, name, Serial(name, sub))


def _efficientnet(chain: Chain, name: str, m: Any) -> None:
    for child in ["_conv_stem", "_bn0", "_swish"]:
        expand(chain, join(name, child), getattr(m, child))
    for i, block in enumerate(m._blocks):
        expand(chain, join(name, f"_blocks.{i}"), block)
    chain.names[-1].append(join(name, "_blocks"))
    for child in ["_conv_head", "_bn1", "_swish", "_avg_pooling"]:
        expand(chain, join(name, child), getattr(m, child))
    chain.add(Flatten(), None)
    expand(chain, join(name, "_dropout"), m._dropout)
    expand(chain, join(name, "_fc"), m._fc)


# family modules that are one operation, tried before the basic table
FAMILY_LEAF_RULES: list[tuple[type, LeafRule]] = []
if _lite_model is not None and _lite_utils is not None:
    FAMILY_BUILDERS[_lite_model.EfficientNet] = _efficientnet
    FAMILY_BUILDERS[_lite_model.MBConvBlock] = _mbconv
    FAMILY_LEAF_RULES += [(_lite_utils.Conv2dStaticSamePadding, _lite_conv),
                   (_lite_utils.Swish, lambda n, m: Pass(n, m, False)),
                   (_lite_utils.MemoryEfficientSwish, lambda n, m: Pass(n, m, False)),
                   (_lite_utils.Identity, lambda n, m: Pass(n, m, None))]




def default_chain(model: nn.Module, leaf_rules: Sequence[tuple[type, LeafRule]] = (),
                  builders: dict[type, BlockBuilder] | None = None) -> Chain:
    """The chain of `model` with the families' tables; `leaf_rules` are tried first, `builders` add or replace
    block builders."""
    return build_chain(model, [*leaf_rules, *FAMILY_LEAF_RULES], {**FAMILY_BUILDERS, **(builders or {})})
