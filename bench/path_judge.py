"""The faithfulness column of bench/quality_neuron.py: path similarity (`vital.metrics.faithfulness`, after Geirhos
et al. 2024, arXiv 2306.04719) of each neuron's image against references the optimisation never saw.

Per neuron: its top-k patches of the judging half, dealt alternately into anchor and held-out (the ceiling); the
floor is the k/2 patches of a seeded sample of the judging half's crops that drive the neuron least. Floor, ceiling
and anchor profiles are computed once per neuron; an image costs one forward to the neuron's layer.
"""

from __future__ import annotations

import numpy as np
import torch

import vital
from vital.metrics.faithfulness import MIN_GAP, floor_images, path_layers, profiles, spearman


class PathJudge:
    """Path similarity of one image per neuron of one layer (see the module docstring)."""

    def __init__(self, model, layer: str, channels: list[int], held01: list[torch.Tensor], pool: list[torch.Tensor]):
        self.model, self.layer, self.channels = model, layer, channels
        self.layers = path_layers(model, vital.Channel(layer, channels[0]))
        self.anchor, self.floor, self.ceiling = [], [], []
        for c, refs in zip(channels, held01, strict=True):
            anchor, held = refs[0::2], refs[1::2]
            low = floor_images(model, vital.Channel(layer, c), pool, len(anchor))
            a = profiles(model, self.layers, anchor)
            self.anchor.append(a)
            self.ceiling.append(self._rho(profiles(model, self.layers, held), a))
            self.floor.append(self._rho(profiles(model, self.layers, low), a))

    def _rho(self, p: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]) -> np.ndarray:
        """(layers,) mean rank correlation of the profiles `p` with the anchor's, per layer."""
        return np.array([float(spearman(p[n], anchor[n]).mean()) for n in self.layers])

    def per_neuron(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """visual, floor, ceiling (neurons, layers); share per layer (NaN where the gap < MIN_GAP) and the summary
        per neuron (the share on the path averaged over layers; NaN where its mean gap < MIN_GAP)."""
        visual = np.stack([self._rho(profiles(self.model, self.layers, images[i:i + 1]), self.anchor[i])
                           for i in range(len(self.channels))])
        floor, ceiling = np.stack(self.floor), np.stack(self.ceiling)
        gap = ceiling - floor
        share = np.where(gap >= MIN_GAP, (visual - floor) / np.where(gap >= MIN_GAP, gap, 1.0), np.nan)
        mean_gap = gap.mean(1)
        summary = np.where(mean_gap >= MIN_GAP, (visual - floor).mean(1) / np.where(mean_gap >= MIN_GAP, mean_gap, 1.0),
                           np.nan)
        return {"visual": visual, "floor": floor, "ceiling": ceiling, "share": share, "summary": summary}


def judging_pool(folder, n: int = 64, seed: int = 0) -> list[torch.Tensor]:
    """A seeded sample of `n` crops of the judging half, as [0,1] tensors: the floor's natural images."""
    from PIL import Image
    from torchvision.transforms.functional import to_tensor

    files = sorted(folder.glob("*.png"))
    pick = np.random.default_rng(seed).permutation(len(files))[:n]
    return [to_tensor(Image.open(files[i]).convert("RGB")) for i in sorted(pick)]
