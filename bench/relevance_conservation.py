"""Relevance conservation per block of the LRP engine, on the offline efficientnet_lite0 (real weights, real photos)
and on a ResNet-18 (random fan-in weights: its pretrained file is not on this machine).

For each pair of consecutive captured blocks the ratio of their relevance sums (1 = conserved), averaged over four
images and target channels, with and without BatchNorm folding and the w^2 fallback for outputs that z+ cannot
explain. A second table measures the modified-gradient rules (`vital.relevance.modified_gradient`: transformers,
ConvNeXt, CNNs without a chain entry) on random-weight vit_b_16, swin_t and convnext_tiny and on the real
efficientnet_lite0, on signed relevance, as given (biases absorb their share, the rule's documented loss) and with
every bias zeroed (exactly conservative up to the z+ stabiliser). Usage: python bench/relevance_conservation.py
"""

from __future__ import annotations

import copy
import warnings

import torch
import torchvision
from torch import nn

import vital
from vital.references.photos import photo_references
from vital.relevance import RelevanceEngine


def ratios(module: nn.Module, target: str, blocks: list[str], x: torch.Tensor, channels: torch.Tensor,
           **options) -> list[float]:
    out = RelevanceEngine(module, target, blocks, **options)(x, channels)
    sums = torch.stack([out[b].flatten(1).sum(1) for b in blocks])
    return (sums[1:] / sums[:-1]).mean(1).tolist()


def main() -> None:
    warnings.simplefilter("ignore")
    lite = vital.load_model("efficientnet_lite0")
    x = photo_references(282, n=4).load(lite.transform())
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18().eval()
    for m in resnet.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    cases = {
        "efficientnet_lite0": (lite.module, "_blocks.15", [f"_blocks.{i}" for i in range(15, -1, -1)] + ["_conv_stem"],
                               x, torch.tensor([3, 10, 50, 100])),
        "resnet18 (random, fan-in)": (resnet, "layer4.1", ["layer4.1", "layer4.0", "layer3.1", "layer3.0", "layer2.1",
                                                           "layer2.0", "layer1.1", "layer1.0", "maxpool"],
                                      x, torch.tensor([3, 10, 50, 100])),
    }
    print("| model | BatchNorm folded | w^2 fallback | min per-block ratio | mean per-block ratio | end-to-end |")
    print("|---|---|---|---|---|---|")
    for name, (module, target, blocks, images, channels) in cases.items():
        for fold, conserve in ((False, False), (True, False), (True, True)):
            r = ratios(module, target, blocks, images, channels, fold_batchnorm=fold, conserve=conserve)
            total = torch.tensor(r).prod().item()
            print(f"| {name} | {fold} | {conserve} | {min(r):.3f} | {sum(r) / len(r):.3f} | {total:.3f} |")
    modified_gradient_table(lite, x)
    engines_agreement(lite, x)


def _signed_ratios(module: nn.Module, blocks: list[str], x: torch.Tensor, channels: torch.Tensor) -> list[float]:
    from vital.relevance.modified_gradient import ModifiedGradientRelevance

    out = ModifiedGradientRelevance(module, blocks[0], blocks, "lrp", signed=True)(x, channels, lambda *a: None)
    sums = torch.stack([out[b].double().flatten(1).sum(1) for b in blocks])
    live = sums[0] != 0  # a sample whose channel is nowhere positive has no relevance to conserve
    return (sums[1:, live] / sums[:-1, live]).mean(1).tolist()


def _random_biases(module: nn.Module) -> nn.Module:
    """Biases (and LayerNorm shifts, ViT's class token and position embedding) drawn from N(0, 0.1): torchvision
    initialises them at zero, which hides what a trained network's biases absorb."""
    torch.manual_seed(1)
    with torch.no_grad():
        for pname, p in module.named_parameters():
            if pname.endswith("bias") or "pos_embedding" in pname or "class_token" in pname:
                p.normal_(0.0, 0.1)
    return module


def modified_gradient_table(lite, x: torch.Tensor) -> None:
    cases = {
        "vit_b_16": [f"encoder.layers.encoder_layer_{i}" for i in range(11, -1, -1)],
        "swin_t": [f"features.{i}" for i in range(7, 0, -1)],
        "convnext_tiny": [f"features.{i}" for i in range(7, 0, -1)],
    }
    print("\n| model (modified-gradient rules) | weights and biases | min per-block ratio | mean per-block ratio "
          "| end-to-end |")
    print("|---|---|---|---|---|")
    channels = torch.tensor([3, 10, 50, 90])
    rows = []
    for name, blocks in cases.items():
        torch.manual_seed(0)
        module = torchvision.models.get_model(name, weights=None).eval()
        rows.append((name, "random, biases 0 (torchvision's init)", module, blocks))
        rows.append((name, "random, biases N(0, 0.1)", _random_biases(copy.deepcopy(module)), blocks))
    rows.append(("efficientnet_lite0", "pretrained", lite.module, [f"_blocks.{i}" for i in range(15, -1, -1)]))
    for name, what, module, blocks in rows:
        r = _signed_ratios(module, blocks, x, channels)
        total = torch.tensor(r).prod().item()
        print(f"| {name} | {what} | {min(r):.3f} | {sum(r) / len(r):.3f} | {total:.3f} |")


def engines_agreement(lite, x: torch.Tensor) -> None:
    """On a real network, how close the modified-gradient rules (what a model without a chain entry gets) come to
    the rule chain: Pearson correlation of their (positive) relevance maps, per layer, over four photos."""
    from vital.relevance.modified_gradient import ModifiedGradientRelevance

    layers = ["_blocks.10", "_blocks.7", "_blocks.4", "_blocks.2", "_conv_stem"]
    channels = torch.tensor([3, 10, 50, 90])
    chain = RelevanceEngine(lite.module, "_blocks.12", layers)(x, channels)
    modified = ModifiedGradientRelevance(lite.module, "_blocks.12", layers, "lrp")(x, channels, lambda *a: None)
    print("\n| efficientnet_lite0, target _blocks.12 | correlation of the two engines' relevance |")
    print("|---|---|")
    for n in layers:
        a, b = chain[n].flatten(1).double(), modified[n].flatten(1).double()
        r = torch.stack([torch.corrcoef(torch.stack([a[i], b[i]]))[0, 1] for i in range(len(a))])
        print(f"| {n} | {r.mean().item():.3f} (per image {', '.join(f'{v:.2f}' for v in r.tolist())}) |")


if __name__ == "__main__":
    main()
