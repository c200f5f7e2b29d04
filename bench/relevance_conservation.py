"""Relevance conservation per block of the LRP engine, on the offline efficientnet_lite0 (real weights, real photos)
and on a ResNet-18 (random fan-in weights: its pretrained file is not on this machine).

For each pair of consecutive captured blocks the ratio of their relevance sums (1 = conserved), averaged over four
images and target channels, with and without BatchNorm folding and the w^2 fallback for outputs that z+ cannot
explain. Usage: python bench/relevance_conservation.py
"""

from __future__ import annotations

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


if __name__ == "__main__":
    main()
