"""The neuron-quality metrics against independent computations: KID by a double loop, the spectral share of
pure sinusoids and noise, activation ratios and retrieval by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vital.errors import VitalError
from vital.features import FeatureExtractor
from vital.metrics.kid import kid_from_features, polynomial_mmd2
from vital.metrics.neuron import (
    activation_ratio,
    channel_spatial_max,
    high_frequency_share,
    naturalness_ratio,
    retrieval_from_features,
)


def test_polynomial_mmd_matches_a_double_loop():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 7)), rng.normal(0.5, 1.0, size=(6, 7))

    def k(x, y):
        return (x @ y / 7 + 1) ** 3

    aa = sum(k(a[i], a[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    bb = sum(k(b[i], b[j]) for i in range(6) for j in range(6) if i != j) / (6 * 5)
    ab = sum(k(a[i], b[j]) for i in range(5) for j in range(6)) / (5 * 6)
    assert polynomial_mmd2(a, b) == pytest.approx(aa + bb - 2 * ab, rel=1e-12)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(1)
    same = kid_from_features(rng.normal(size=(40, 16)), rng.normal(size=(40, 16)), subsets=50, subset_size=20)
    other = kid_from_features(rng.normal(size=(40, 16)), rng.normal(1.0, 1.0, size=(40, 16)), subsets=50,
                              subset_size=20)
    assert abs(same.mean) < 3 * same.std / math.sqrt(50) + 0.05 and other.mean > 10 * abs(same.mean)
    assert (other.n_a, other.n_b, other.subsets, other.subset_size) == (40, 40, 50, 20)
    with pytest.raises(VitalError, match="at least 2 images"):
        kid_from_features(np.zeros((1, 4)), np.zeros((3, 4)))


def _wave(cycles_per_pixel: float, size: int = 64) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64)
    row = 0.5 + 0.4 * torch.sin(2 * math.pi * cycles_per_pixel * x)
    return row.expand(3, size, size).float()


def test_high_frequency_share_of_sinusoids_and_noise():
    low, high = high_frequency_share(torch.stack([_wave(2 / 64), _wave(24 / 64)]))
    assert low < 0.01 and high > 0.99  # all power below / above a quarter of Nyquist (0.125 cycles per pixel)
    noise = high_frequency_share(torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert noise.mean() == pytest.approx(1 - math.pi * 0.125 ** 2, abs=0.03)  # white: the share of the area
    assert naturalness_ratio(_wave(24 / 64)[None], _wave(24 / 64)[None]) == pytest.approx(1.0)


def test_activation_ratio_by_hand(tiny_model):
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    act = FeatureExtractor(tiny_model.module, ["stage1"])(tiny_model.normalize(images))["stage1"][:, 5]
    maxima = act.amax(-1)
    assert torch.allclose(channel_spatial_max(tiny_model, "stage1", 5, images), maxima)
    ratio = activation_ratio(tiny_model, "stage1", 5, images[:1], images[1:])
    assert ratio == pytest.approx(float(maxima[0] / maxima[1:].median()), rel=1e-6)


def test_retrieval_ranks_by_mean_cosine():
    vis = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    sets = [np.array([[1.0, 0.0], [1.0, 0.2]]), np.array([[0.0, 1.0]]), np.array([[0.0, 2.0], [0.1, 1.0]])]
    r = retrieval_from_features(vis, sets)
    assert r.ranks == [1, 1, 2] and r.top1 == pytest.approx(2 / 3) and r.chance == pytest.approx(1 / 3)
    cos = (vis[2] / np.linalg.norm(vis[2])) @ (sets[0][1] / np.linalg.norm(sets[0][1]))
    assert r.scores[2, 0] == pytest.approx((vis[2][0] / np.linalg.norm(vis[2]) + cos) / 2)


def test_kid_matches_torchmetrics():
    """Our unbiased polynomial MMD against torchmetrics' (an independent implementation; equal set sizes, which its
    formula assumes), and KID's subset mean over one subset holding every image."""
    tm = pytest.importorskip("torchmetrics.image.kid")
    rng = np.random.default_rng(3)
    fa, fb = rng.normal(size=(30, 12)), rng.normal(0.3, 1.2, size=(30, 12))
    theirs = float(tm.poly_mmd(torch.from_numpy(fa), torch.from_numpy(fb)))
    assert polynomial_mmd2(fa, fb) == pytest.approx(theirs, rel=1e-10)
    whole = kid_from_features(fa, fb, subsets=3, subset_size=30)
    assert whole.mean == pytest.approx(theirs, rel=1e-10) and whole.std == pytest.approx(0.0, abs=1e-12)
