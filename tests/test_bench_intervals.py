"""The quality benches' bootstrap: KID over resampled neurons equals the library's unbiased KID when nothing is
resampled, never pairs an image with itself, and the percentile interval brackets the full-sample value."""

import sys
from pathlib import Path

import numpy as np

from vital.metrics.kid import polynomial_mmd2

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
from intervals import KIDBootstrap, bootstrap  # noqa: E402


def test_kid_with_every_neuron_once_is_the_unbiased_kid():
    rng = np.random.default_rng(0)
    fa, fb = rng.normal(size=(9, 5)), rng.normal(0.3, 1.0, size=(14, 5))
    assert np.isclose(KIDBootstrap(fa, fb)(np.arange(9)), polynomial_mmd2(fa, fb))


def test_kid_of_a_resample_is_the_kid_of_distinct_neurons_weighted_by_count():
    rng = np.random.default_rng(1)
    fa, fb = rng.normal(size=(4, 3)), rng.normal(size=(6, 3))
    idx = np.array([0, 0, 2, 3])  # neuron 0 twice, neuron 1 never
    k = lambda a, b: (a @ b.T / 3 + 1) ** 3  # noqa: E731
    pairs = [(i, j) for i in range(4) for j in range(4) if idx[i] != idx[j]]  # never an image with itself
    within_a = np.mean([k(fa[idx[i]][None], fa[idx[j]][None])[0, 0] for i, j in pairs])
    kbb = k(fb, fb)
    within_b = (kbb.sum() - np.trace(kbb)) / (6 * 5)
    cross = k(fa[idx], fb).mean()
    assert np.isclose(KIDBootstrap(fa, fb)(idx), within_a + within_b - 2 * cross)


def test_bootstrap_interval_of_a_mean():
    values = np.random.default_rng(2).normal(5.0, 1.0, size=400)
    v, lo, hi = bootstrap(lambda i: float(values[i].mean()), len(values), boot=500)
    assert v == values.mean() and lo < v < hi
    # the percentile interval of a mean is close to +-1.96 standard errors
    se = values.std() / np.sqrt(len(values))
    assert abs((hi - lo) / (2 * 1.96 * se) - 1) < 0.2
