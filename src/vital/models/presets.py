"""One table of per-architecture settings: which layers VITAL matches, their weights, and prior strengths.

The paper's rows (resnet50, densenet121, convnext_base, vit_l_16, vit_l_32) are SPEC section 3. Rows of our own
(vit_b_*, mobilenet_v2, efficientnet_lite*) follow the same pattern: the stem plus the end of each resolution stage
(CNNs), or the patch embedding plus four encoder layers spread over the depth (ViTs). Any other model gets that
pattern from `stage_ends`, computed from one forward pass, so every model works without a row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vital.features import layer_table


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
    "efficientnet_lite0": Preset(None, source="vital"),
    "efficientnet_lite1": Preset(None, source="vital"),
    "efficientnet_lite2": Preset(None, source="vital"),
}


def stage_ends(model: nn.Module, size: int = 224) -> list[str]:
    """The stem (first convolution) and the last block at each spatial resolution after it.

    "Block" means a child of a plain `nn.Sequential`/`nn.ModuleList` with no such block above it (a residual block,
    a dense block, a layer of a VGG trunk), or a top-level child when no block has that resolution; top-level
    modules at the stem's resolution are part of the stem. Hooks fire when a module
    finishes, so the last one seen at a resolution is that stage's output."""
    parents = {}
    for pname, parent in model.named_modules():
        for cname, _ in parent.named_children():
            parents[f"{pname}.{cname}" if pname else cname] = parent
    p = next(model.parameters(), None)
    x = torch.zeros(1, 3, size, size, device=p.device if p is not None else "cpu",
                    dtype=p.dtype if p is not None else torch.float32)
    rows = layer_table(model, x)
    types = dict(model.named_modules())
    stem = next((n for n, _, shape in rows if isinstance(types[n], nn.Conv2d) and len(shape) == 4), None)
    if stem is None:
        return []
    stem_res = next(shape[2:] for n, _, shape in rows if n == stem)
    blocks = {n for n, parent in parents.items() if type(parent) in (nn.Sequential, nn.ModuleList)}
    outermost = {n for n in blocks if not any(a in blocks for a in _ancestors(n))}
    in_container, top_level = {}, {}
    for n, _, shape in rows:
        if len(shape) != 4 or shape[2] * shape[3] == 1 or n == stem:
            continue  # not a map, or a globally pooled vector
        if n in outermost:
            in_container[shape[2:]] = n
        elif "." not in n and shape[2:] != stem_res:
            top_level[shape[2:]] = n
    ends = {**top_level, **in_container}
    order = {n: i for i, (n, _, _) in enumerate(rows)}
    shapes = {n: shape for n, _, shape in rows}
    kept = [stem]
    for n in sorted(ends.values(), key=order.__getitem__):
        if shapes[n][2] <= shapes[kept[-1]][2]:  # resolution only falls along a trunk (skip e.g. a VGG's 7x7 pool)
            kept.append(n)
    return kept


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def preset_for(name: str, model: nn.Module | None = None, size: int = 224) -> Preset:
    """The table's row for `name`, with derived layers filled in; models without a row get the generic rule."""
    row = PRESETS.get(name)
    if row is not None and row.layers is not None:
        return row
    if model is None:
        raise ValueError(f"preset for {name} needs the model to derive its layers")
    layers = tuple(stage_ends(model, size))
    weights = row.layer_weights if row is not None and row.layer_weights else (1.0,) * len(layers)
    if len(weights) != len(layers):
        weights = (1.0,) * len(layers)
    base = row or Preset(None, source="generic")
    return Preset(layers, tuple(float(w) for w in weights), base.tv_l2, base.l2, base.tv_l1, base.source)
