"""Numbers that judge an intermediate-neuron visualization against its references, and that a noise image fails.

- `activation_ratio`: the target channel's spatial maximum on the visualization over the median of the same on its
  reference images: does the image drive the neuron as its best real inputs do?
- `retrieval`: in an independent network's embedding, is a visualization closer (mean cosine) to its own neuron's
  references than to any other neuron's? A stand-in for the paper's user study of "FV-reference correspondence".
- `high_frequency_share` / `naturalness_ratio`: the share of spectral power above a quarter of the Nyquist
  frequency, the visualization's over its references'. Natural images put little power there (near 1 for an image
  like its references); pixel noise spreads it evenly (about 0.95 of the power; a ratio far above 1).
- KID against the references lives in `vital.metrics.kid`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vital.features import FeatureExtractor
from vital.metrics.classify import Images, as_image_list, preprocess
from vital.metrics.embedding import penultimate_features
from vital.models import VisionModel

NATURAL_CUTOFF = 0.25  # of the Nyquist frequency


def high_frequency_share(images: Images, cutoff: float = NATURAL_CUTOFF) -> np.ndarray:
    """Per image: spectral power of the (Hann-windowed, mean-removed) luminance at radial frequencies above
    `cutoff` x Nyquist, over all power but DC. The window keeps the image border from adding false high
    frequencies."""
    out = []
    for im in as_image_list(images):
        lum = im.double().mean(0)
        h, w = lum.shape
        window = torch.outer(torch.hann_window(h, periodic=False, dtype=torch.float64),
                             torch.hann_window(w, periodic=False, dtype=torch.float64))
        z = (lum - lum.mean()) * window
        power = torch.fft.fft2(z).abs().square()
        fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
        fx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :]
        radius = torch.sqrt(fx ** 2 + fy ** 2)  # cycles per pixel; Nyquist is 0.5
        total = power[radius > 0].sum()
        out.append(float(power[radius > cutoff * 0.5].sum() / total) if total > 0 else 0.0)
    return np.array(out)


def naturalness_ratio(images: Images, references: Images, cutoff: float = NATURAL_CUTOFF) -> float:
    """Mean high-frequency share of `images` over the mean of `references`' (1: as natural as the references)."""
    ref = high_frequency_share(references, cutoff).mean()
    return float(high_frequency_share(images, cutoff).mean() / max(ref, 1e-12))


def channel_spatial_max(model: VisionModel, layer: str, channel: int, images: Images) -> torch.Tensor:
    """(N,) spatial maximum of `channel` of `layer` for [0,1] images (resized and cropped to the model's input)."""
    x = torch.stack([preprocess(model, im) for im in as_image_list(images)]).to(model.device, model.dtype)
    with torch.no_grad():
        act = FeatureExtractor(model.module, [layer])(x)[layer]
    return act[:, channel].amax(dim=-1).float().cpu()


def activation_ratio(model: VisionModel, layer: str, channel: int, image: Images, references: Images) -> float:
    """Spatial max of the channel on `image` (the mean if several) over the median of it on `references`."""
    vis = channel_spatial_max(model, layer, channel, image).mean()
    ref = channel_spatial_max(model, layer, channel, references).median()
    return float(vis / ref) if float(ref) > 0 else float("nan")


@dataclass(frozen=True)
class Retrieval:
    """ranks[i]: rank (1 = nearest) of visualization i's own reference set among all sets; scores: (K, K) mean
    cosine of visualization i to reference set j."""

    ranks: list[int]
    scores: np.ndarray

    @property
    def top1(self) -> float:
        return float(np.mean([r == 1 for r in self.ranks]))

    @property
    def chance(self) -> float:
        return 1.0 / len(self.ranks)


def retrieval(judge: VisionModel, images: Images, reference_sets: Sequence[Images]) -> Retrieval:
    """For K visualizations and their K reference sets (same order), the rank of each visualization's own set by
    mean cosine similarity in the judge's penultimate features."""
    return retrieval_from_features(penultimate_features(judge, images),
                                   [penultimate_features(judge, refs) for refs in reference_sets])


def retrieval_from_features(images: np.ndarray, reference_sets: Sequence[np.ndarray]) -> Retrieval:
    """`retrieval` on embeddings already computed: (K, D) for the visualizations, K arrays (n_k, D) for the sets."""
    if len(images) != len(reference_sets):
        raise ValueError(f"{len(images)} images but {len(reference_sets)} reference sets: give one set per image")
    vis = _unit(images)
    scores = np.stack([(vis @ _unit(refs).T).mean(1) for refs in reference_sets], 1)
    ranks = [int((scores[i] > scores[i, i]).sum()) + 1 for i in range(len(vis))]
    return Retrieval(ranks, scores)


def _unit(f: np.ndarray) -> np.ndarray:
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
