"""Kernel Inception Distance (Binkowski et al., ICLR 2018): the unbiased squared MMD between two sets of Inception
pool features with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets.

Unlike FID, the estimate is unbiased at any sample size, which is what one neuron or one class gives (tens of
images). Its spread over subsets is reported with it. Features come from the same offline Inception network as FID.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vital.errors import VitalError
from vital.metrics.classify import Images
from vital.metrics.fid import InceptionFeatures

DEFAULT_SUBSETS = 100
DEFAULT_SUBSET_SIZE = 1000  # the usual value; capped at the smaller set's size


@dataclass(frozen=True)
class KIDResult:
    """KID between set a and set b: mean and standard deviation over `subsets` draws of `subset_size` each."""

    mean: float
    std: float
    n_a: int
    n_b: int
    subsets: int
    subset_size: int

    def describe(self) -> str:
        return (f"KID {self.mean:.4f} ± {self.std:.4f} (n={self.n_a} vs {self.n_b}, {self.subsets} subsets of "
                f"{self.subset_size})")


def polynomial_mmd2(fa: np.ndarray, fb: np.ndarray) -> float:
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3: within-set sums exclude the diagonal."""
    d = fa.shape[1]
    kaa = (fa @ fa.T / d + 1) ** 3
    kbb = (fb @ fb.T / d + 1) ** 3
    kab = (fa @ fb.T / d + 1) ** 3
    m, n = len(fa), len(fb)
    within_a = (kaa.sum() - np.trace(kaa)) / (m * (m - 1))
    within_b = (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
    return float(within_a + within_b - 2 * kab.mean())


def kid_from_features(fa: np.ndarray, fb: np.ndarray, subsets: int = DEFAULT_SUBSETS,
                      subset_size: int = DEFAULT_SUBSET_SIZE, seed: int = 0) -> KIDResult:
    """KID of two feature sets (n, d): subsets drawn without replacement within a subset, seeded."""
    fa, fb = np.asarray(fa, np.float64), np.asarray(fb, np.float64)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise VitalError(f"feature sets must be (n, d) with equal d, got {fa.shape} and {fb.shape}")
    size = min(subset_size, len(fa), len(fb))
    if size < 2:
        raise VitalError(f"KID needs at least 2 images in each set, got {len(fa)} and {len(fb)}: add images")
    if subsets < 1:
        raise VitalError(f"subsets must be at least 1, got {subsets}")
    rng = np.random.default_rng(seed)
    values = [polynomial_mmd2(fa[rng.choice(len(fa), size, replace=False)],
                              fb[rng.choice(len(fb), size, replace=False)]) for _ in range(subsets)]
    return KIDResult(float(np.mean(values)), float(np.std(values)), len(fa), len(fb), subsets, size)


def kid(images_a: Images, images_b: Images, device: str | torch.device = "cpu", subsets: int = DEFAULT_SUBSETS,
        subset_size: int = DEFAULT_SUBSET_SIZE, seed: int = 0, progress: bool = False) -> KIDResult:
    """KID between two image sets ([0,1] tensors or paths), each of at least 2 images."""
    features = InceptionFeatures(device)
    fa, fb = features(images_a, progress=progress), features(images_b, progress=progress)
    return kid_from_features(fa, fb, subsets, subset_size, seed)
