"""One table of per-architecture settings: which layers VITAL matches, their weights, and prior strengths.

The paper's rows (resnet50, densenet121, convnext_base, vit_l_16, vit_l_32) come from its experiments (arXiv 2503.22399). Rows of our own
(vit_b_*, mobilenet_v2, efficientnet_lite*) follow the same pattern: the stem plus the end of each resolution stage
(CNNs), or the patch embedding plus four encoder layers spread over the depth (ViTs). A row is found by
architecture (module types and structure, `architecture`), not by name, so a torchvision densenet121 passed as a
module, or a ViT wrapped in another module, gets the paper's row. Any other model gets the pattern from
`stage_ends`, computed from one forward pass, with a one-line note: every model works without a row.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vital.features import LayerRow, layer_table
from vital.layout import Layout


@dataclass(frozen=True)
class Preset:
    """Matched layers (dotted module names, None = derive with `stage_ends`) and their loss weights."""

    layers: tuple[str, ...] | None
    layer_weights: tuple[float, ...] | None = None
    tv_l2: float = 0.0
    l2: float = 0.0
    tv_l1: float = 0.0
    source: str = "paper"


def _vit(layers: tuple[int, ...], weights=(1, 1, 1, 1, 1), tv: float = 0.0, source: str = "paper") -> Preset:
    names = ("conv_proj", *(f"encoder.layers.encoder_layer_{i}" for i in layers))
    return Preset(names, tuple(float(w) for w in weights), tv_l2=tv, l2=tv, source=source)


PRESETS: dict[str, Preset] = {
    "resnet50": Preset(("conv1", "layer1", "layer2", "layer3", "layer4"), (1, 1, 1, 1, 1)),
    "densenet121": Preset(
        ("features.conv0", "features.denseblock1", "features.denseblock2", "features.denseblock3",
         "features.denseblock4"), (1, 1, 1, 1, 100)),
    # features.7.2 is the last CNBlock: its output is the residual sum that the paper's FX node "features.7.2.add" reads.
    "convnext_base": Preset(("features.0", "features.2.1", "features.4.1", "features.6.1", "features.7.2"),
                            (10, 1, 1, 1, 1)),
    "vit_l_16": _vit((2, 9, 20, 23), tv=3e-3),
    "vit_l_32": _vit((2, 9, 20, 23), (1, 1, 1, 1, 0.1), tv=3e-4),
    # Ours: ViT-B has 12 layers; the same relative depths as the paper's ViT-L choice, priors of the same patch size.
    "vit_b_16": _vit((0, 4, 8, 11), tv=3e-3, source="vital"),
    "vit_b_32": _vit((0, 4, 8, 11), (1, 1, 1, 1, 0.1), tv=3e-4, source="vital"),
    "mobilenet_v2": Preset(("features.0", "features.3", "features.6", "features.13", "features.17"),
                           (1, 1, 1, 1, 1), source="vital"),
    "efficientnet_lite": Preset(None, source="vital"),  # derived by `stage_ends` (every lite width)
}


def _spatial(row: LayerRow) -> tuple[int, ...] | None:
    """The (H, W) of a map output, None for tokens and vectors."""
    if row.layout is Layout.CHANNELS_FIRST and len(row.shape) == 4:
        return row.shape[2:]
    if row.layout is Layout.CHANNELS_LAST:
        return row.shape[1:3]
    return None


def _block_names(model: nn.Module) -> set[str]:
    """Outermost blocks: children of a plain `nn.Sequential`/`nn.ModuleList` with no such block above them."""
    parents = {}
    for pname, parent in model.named_modules():
        for cname, _ in parent.named_children():
            parents[f"{pname}.{cname}" if pname else cname] = parent
    blocks = {n for n, parent in parents.items() if type(parent) in (nn.Sequential, nn.ModuleList)}
    return {n for n in blocks if not any(a in blocks for a in _ancestors(n))}


def stage_ends(model: nn.Module, size: int = 224) -> list[str]:
    """The stem (first convolution) and the last block at each spatial resolution after it; for a transformer
    (token blocks), the stem and four token blocks spread over the depth.

    "Block" means a child of a plain `nn.Sequential`/`nn.ModuleList` with no such block above it (a residual block,
    a dense block, a layer of a VGG trunk, a Swin stage), or a top-level child when no block has that resolution;
    top-level modules at the stem's resolution are part of the stem. Resolutions are read in each layer's layout
    (Swin's stages are channels-last). Hooks fire when a module finishes, so the last one seen at a resolution is
    that stage's output. A layer whose output is the stem's own tensor, changed in place (VGG's ReLU(inplace=True)
    after the first conv), is not a stage: it would match the stem twice."""
    p = next(model.parameters(), None)
    x = torch.zeros(1, 3, size, size, device=p.device if p is not None else "cpu",
                    dtype=p.dtype if p is not None else torch.float32)
    outputs: dict[str, torch.Tensor] = {}
    rows = layer_table(model, x, outputs)
    types = dict(model.named_modules())
    stem = next((r.name for r in rows if isinstance(types[r.name], nn.Conv2d) and len(r.shape) == 4), None)
    if stem is None:
        return []
    stem_res = next(_spatial(r) for r in rows if r.name == stem)
    stem_storage = outputs[stem].untyped_storage().data_ptr()
    outermost = _block_names(model)
    tokens = [r.name for r in rows if r.name in outermost and r.layout is Layout.TOKENS]
    if len(tokens) >= 4:
        picks = sorted({round(f * (len(tokens) - 1)) for f in (0.0, 1 / 3, 2 / 3, 1.0)})
        return [stem, *(tokens[i] for i in picks)]
    in_container, top_level = {}, {}
    for r in rows:
        res = _spatial(r)
        if (res is None or res[0] * res[1] == 1 or r.name == stem
                or outputs[r.name].untyped_storage().data_ptr() == stem_storage):
            continue  # not a map, a globally pooled vector, or the stem itself (changed in place)
        if r.name in outermost:
            in_container[res] = r.name
        elif "." not in r.name and res != stem_res:
            top_level[res] = r.name
    ends = {**top_level, **in_container}
    order = {r.name: i for i, r in enumerate(rows)}
    spatial = {r.name: _spatial(r) for r in rows}
    kept = [stem]
    for n in sorted(ends.values(), key=order.__getitem__):
        here, last = spatial[n], spatial[kept[-1]]
        assert here is not None and last is not None  # `ends` and the stem are maps
        if here[0] <= last[0]:  # resolution only falls along a trunk
            kept.append(n)
    return kept


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _count(m: nn.Module, kind: type) -> int:
    return sum(isinstance(x, kind) for x in m.modules())


def _identify(m: Any) -> str | None:  # attributes read duck-typed
    """The table row of module `m`'s own architecture, recognised by its types and structure."""
    from torchvision.models import convnext, densenet, mobilenetv2, resnet, vision_transformer

    if type(m) is resnet.ResNet:
        depths = [len(getattr(m, f"layer{i}")) for i in range(1, 5)]
        if isinstance(m.layer1[0], resnet.Bottleneck) and depths == [3, 4, 6, 3] and m.fc.in_features == 2048:
            return "resnet50"
    elif type(m) is densenet.DenseNet:
        blocks = [c for c in m.features if isinstance(c, densenet._DenseBlock)]
        if [len(b) for b in blocks] == [6, 12, 24, 16] and m.features.conv0.out_channels == 64:
            return "densenet121"
    elif type(m) is convnext.ConvNeXt:
        stages = [c for c in m.features if isinstance(c, nn.Sequential) and _count(c, convnext.CNBlock)]
        if [len(s) for s in stages] == [3, 3, 27, 3] and m.features[0][0].out_channels == 128:
            return "convnext_base"
    elif type(m) is vision_transformer.VisionTransformer:
        key = {(24, 1024, 16): "vit_l_16", (24, 1024, 32): "vit_l_32", (12, 768, 16): "vit_b_16",
               (12, 768, 32): "vit_b_32"}
        return key.get((len(m.encoder.layers), m.hidden_dim, m.patch_size))
    elif type(m) is mobilenetv2.MobileNetV2:
        return "mobilenet_v2"
    elif type(m).__module__.startswith("efficientnet_lite_pytorch"):
        if type(m).__name__ == "EfficientNet":
            return "efficientnet_lite"
    return None


def architecture(model: nn.Module) -> tuple[str, str] | None:
    """(row, prefix): the table row of the first module of `model` (itself, or one it wraps) whose architecture
    has one, and that module's dotted name (prefixed to the row's layers)."""
    for name, m in model.named_modules():
        row = _identify(m)
        if row is not None:
            return row, name
    return None


def preset_for(model: nn.Module, size: int = 224) -> Preset:
    """The preset of `model`'s architecture, its derived layers filled in; a model without a row gets the
    generic rule (`stage_ends`) and a one-line note saying so."""
    found = architecture(model)
    if found is not None:
        key, prefix = found
        row = PRESETS[key]
        if row.layers is not None:
            layers = tuple(f"{prefix}.{n}" if prefix else n for n in row.layers)
            return dataclasses.replace(row, layers=layers)
    layers = tuple(stage_ends(model, size))
    if found is None:
        warnings.warn(f"no preset for {type(model).__name__}: matching the generic layers (the stem and the end of "
                      f"each stage): {', '.join(layers) or 'none found'}", stacklevel=2)
        return Preset(layers, (1.0,) * len(layers), source="generic")
    return Preset(layers, (1.0,) * len(layers), source="vital")
