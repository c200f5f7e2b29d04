"""Percentile bootstrap intervals over neurons for the quality benches: every figure is a statistic of per-neuron
values (or, for KID, of the neurons' images), so the neurons are resampled with replacement and the statistic
recomputed; the interval is the 2.5th and 97.5th percentile of the resampled statistics.

KID under resampling: the unbiased MMD^2 sums the kernel over pairs of distinct images; a resample that draws one
neuron twice would pair an image with itself. `weighted_mmd2` counts each neuron by its multiplicity m_a and sums
the within-set kernel over pairs of *distinct neurons* only (weights m_a m_b), so the resampled value stays an
unbiased-form estimate; with every multiplicity 1 it is exactly the usual unbiased MMD^2.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BOOT = 2000


def poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3, the KID kernel."""
    return (a @ b.T / a.shape[1] + 1) ** 3


def weighted_mmd2(k_aa: np.ndarray, k_ab: np.ndarray, k_bb_term: float, m: np.ndarray) -> float:
    """MMD^2 of images a (multiplicities m, kernel matrices precomputed) against a fixed set b: the within-a term
    over pairs of distinct images weighted m_i m_j, the cross term weighted m_i; `k_bb_term` is b's own
    (unbiased) within-set mean."""
    w = np.outer(m, m).astype(np.float64)
    np.fill_diagonal(w, 0.0)
    within = float((w * k_aa).sum() / w.sum())
    cross = float((m[:, None] * k_ab).sum() / (m.sum() * k_ab.shape[1]))
    return within + k_bb_term - 2 * cross


class KIDBootstrap:
    """KID of a set of images (one per neuron) against fixed reference features, and its bootstrap over neurons."""

    def __init__(self, fa: np.ndarray, fb: np.ndarray):
        fa, fb = np.asarray(fa, np.float64), np.asarray(fb, np.float64)
        self.k_aa, self.k_ab = poly_kernel(fa, fa), poly_kernel(fa, fb)
        k_bb = poly_kernel(fb, fb)
        n = len(fb)
        self.k_bb_term = float((k_bb.sum() - np.trace(k_bb)) / (n * (n - 1)))

    def __call__(self, idx: np.ndarray) -> float:
        m = np.bincount(idx, minlength=self.k_aa.shape[0]).astype(np.float64)
        return weighted_mmd2(self.k_aa, self.k_ab, self.k_bb_term, m)


def bootstrap(stat: Callable[[np.ndarray], float], n: int, boot: int = BOOT, seed: int = 0
              ) -> tuple[float, float, float]:
    """(value on all n neurons, 2.5th, 97.5th percentile over `boot` resamples of the neuron indices)."""
    rng = np.random.default_rng(seed)
    full = stat(np.arange(n))
    draws = np.array([stat(rng.integers(0, n, n)) for _ in range(boot)])
    draws = draws[np.isfinite(draws)]
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(full), float(lo), float(hi)
