import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from vital.objectives.sort_matching import PrototypeAccumulator, quantile_prototype, sort_matching_loss


def explicit_loss(s: np.ndarray, t: np.ndarray) -> float:
    """SPEC section 2 literally: q = mean of sorted refs, rank = argsort(argsort(s)), E = (s - q[rank])^2."""
    c_dim, p_dim = s.shape
    q = np.sort(t, axis=-1).mean(axis=0)
    total = 0.0
    for c in range(c_dim):
        rank = np.argsort(np.argsort(s[c]))
        for p in range(p_dim):
            total += (s[c, p] - q[c, rank[p]]) ** 2
    return total / (c_dim * p_dim)


def test_loss_equals_explicit_rank_gather():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(4, 9)), rng.normal(size=(5, 4, 9))
    ours = sort_matching_loss(torch.tensor(s)[None], quantile_prototype(torch.tensor(t)))
    assert ours.shape == (1,)
    assert ours.item() == pytest.approx(explicit_loss(s, t), rel=1e-12)


def test_single_reference_is_optimal_transport_w2():
    """With one reference the loss is the squared W2 distance: the cost of the optimal assignment."""
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(3, 12)), rng.normal(size=(1, 3, 12))
    expected = 0.0
    for c in range(3):
        cost = (s[c][:, None] - t[0, c][None, :]) ** 2
        r, k = linear_sum_assignment(cost)
        expected += cost[r, k].sum()
    expected /= 3 * 12
    ours = sort_matching_loss(torch.tensor(s)[None], quantile_prototype(torch.tensor(t))).item()
    assert ours == pytest.approx(expected, rel=1e-12)


def test_gradient_is_residual_at_rank():
    rng = np.random.default_rng(2)
    s = torch.tensor(rng.normal(size=(1, 2, 7)), requires_grad=True)
    q = quantile_prototype(torch.tensor(rng.normal(size=(3, 2, 7))))
    sort_matching_loss(s, q).sum().backward()
    rank = s.detach()[0].argsort(-1).argsort(-1)
    expected = 2 * (s.detach()[0] - torch.gather(q, 1, rank)) / (2 * 7)
    assert torch.allclose(s.grad[0], expected)
    torch.autograd.gradcheck(lambda z: sort_matching_loss(z, q), (s,))


def test_each_sample_matched_against_its_own_references():
    torch.manual_seed(0)
    s = torch.randn(2, 3, 10)
    q_a, q_b = quantile_prototype(torch.randn(4, 3, 10)), quantile_prototype(torch.randn(4, 3, 10) + 3)
    batched = sort_matching_loss(s, torch.stack([q_a, q_b]))
    assert torch.allclose(batched[0], sort_matching_loss(s[:1], q_a)[0])
    assert torch.allclose(batched[1], sort_matching_loss(s[1:], q_b)[0])
    assert batched[1] > batched[0]


def test_channel_weights_scale_per_channel():
    torch.manual_seed(0)
    s, q = torch.randn(1, 2, 5), torch.randn(2, 5).sort(-1).values
    w = torch.tensor([[2.0, 0.0]])
    per_channel = (s.sort(-1).values - q).square().mean(-1)  # (1, 2)
    assert torch.allclose(sort_matching_loss(s, q, w), (per_channel * w).sum(-1) / 2)


def test_fast_cpu_sort_equals_torch_sort_with_the_same_gradient():
    from vital.objectives.sort_matching import sort_last

    # distinct values (ties may be broken either way), large enough for the threaded path
    x = (torch.randperm(2 * 64 * 1200).float().view(2, 64, 1200) / 1000).requires_grad_(True)
    w = torch.randn(2, 64, 1200)
    (sort_last(x) * w).sum().backward()
    g_fast = x.grad.clone()
    x.grad = None
    (x.sort(dim=-1).values * w).sum().backward()
    assert torch.equal(sort_last(x), x.sort(dim=-1).values) and torch.allclose(g_fast, x.grad)


def test_accumulator_in_chunks_equals_one_shot():
    t = torch.randn(7, 3, 11)
    acc = PrototypeAccumulator()
    for chunk in t.split(3):
        acc.add(chunk)
    assert torch.allclose(acc.prototype(), quantile_prototype(t), atol=1e-6)


def test_position_count_mismatch_is_explained():
    with pytest.raises(ValueError, match="same resolution"):
        sort_matching_loss(torch.randn(1, 2, 5), torch.randn(2, 6))
