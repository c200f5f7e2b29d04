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


def _plain_reference(x: torch.Tensor, targets) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss written with torch.sort(stable=True) and autograd, and its gradient: what the fused pass must equal."""
    x = x.detach().clone().requires_grad_(True)
    s = x.sort(dim=-1, stable=True).values
    loss = 0
    for q, w, scale in targets:
        err = (s - q).square()
        if w is not None:
            err = err * w.unsqueeze(-1)
        loss = loss + scale * err.mean(dim=(1, 2))
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), g


def _with_ties(shape, dtype=torch.float32, seed=0) -> torch.Tensor:
    """Values with many exact ties: ReLU zeros (as +0.0 and -0.0), repeated values and clamped ones."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    x = torch.where(x < -0.3, torch.zeros_like(x), x)  # a third exact zeros
    x[..., ::7] = -0.0
    x[..., ::11] = 0.75
    return x.clamp(max=1.5)  # ReLU6-like plateau


@pytest.mark.parametrize("shape", [(2, 3, 50), (2, 40, 2000)])  # one block, and several blocks on threads
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # the numpy pass, and the torch pass
def test_fused_pass_equals_plain_sort_loss_and_gradient_with_ties(shape, dtype):
    from vital.objectives.sort_matching import Prototype, sort_matching_losses

    x = _with_ties(shape, dtype)
    b, c, p = shape
    g = torch.Generator().manual_seed(1)
    q_shared = torch.randn(c, p, generator=g).to(dtype).sort(-1).values
    q_each = torch.randn(b, c, p, generator=g).to(dtype).sort(-1).values
    w = torch.rand(b, c, generator=g).to(dtype)
    targets = [(q_shared, w, 0.7), (q_each, None, 1.3)]
    expected_loss, expected_grad = _plain_reference(x, targets)
    xs = x.clone().requires_grad_(True)
    loss = sort_matching_losses(xs, [Prototype(q, w_, s) for q, w_, s in targets])
    (grad,) = torch.autograd.grad(loss.sum(), xs)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert torch.allclose(loss, expected_loss, rtol=tol, atol=0)
    assert torch.allclose(grad, expected_grad, rtol=tol, atol=tol * expected_grad.abs().max())
    # ties are broken by position, as the stable sort does: the residuals of tied values differ, so a different
    # assignment would show here
    zeros = x == 0
    assert zeros.sum() > 0.2 * x.numel() and not torch.equal(grad[zeros], grad[zeros][0].expand(int(zeros.sum())))


def test_fused_pass_scales_with_the_incoming_gradient_and_gives_the_same_loss_without_grad():
    from vital.objectives.sort_matching import Prototype, sort_matching_losses

    x = torch.randn(3, 4, 30, requires_grad=True)
    q = torch.randn(4, 30).sort(-1).values
    loss = sort_matching_losses(x, [Prototype(q)])
    weights = torch.tensor([1.0, -2.0, 0.5])
    (grad,) = torch.autograd.grad((loss * weights).sum(), x)
    _, plain = _plain_reference(x, [(q, None, 1.0)])  # each sample's gradient, at weight 1
    assert torch.allclose(grad, plain * weights.view(-1, 1, 1), atol=1e-7)
    with torch.no_grad():
        assert torch.allclose(sort_matching_losses(x, [Prototype(q)]), loss)


def test_order_keys_sort_like_floats():
    from vital.objectives.sort_matching import _order_keys

    v = np.array([np.inf, 3.0, 1e-40, 0.0, -0.0, -1e-40, -2.5, -np.inf, 2.0, -3.0e38, 3.0e38, 1e-45, -1e-45],
                 dtype=np.float32)[None]
    order = np.sort(_order_keys(v), axis=-1) & 0xFFFFFFFF
    sorted_values = v[0, order[0]]
    assert np.array_equal(sorted_values, np.sort(v[0]))
    # -0.0 and 0.0 compare equal, so they keep their positions' order (index 3 before 4)
    assert list(order[0]).index(3) < list(order[0]).index(4)


def test_sort_last_is_stable_and_differentiable():
    from vital.objectives.sort_matching import sort_last

    x = _with_ties((2, 64, 1200)).requires_grad_(True)  # large enough for the threaded path
    w = torch.randn(2, 64, 1200)
    (sort_last(x) * w).sum().backward()
    ref = x.detach().clone().requires_grad_(True)
    (ref.sort(dim=-1, stable=True).values * w).sum().backward()
    assert torch.equal(sort_last(x.detach()), ref.detach().sort(dim=-1).values)
    assert torch.equal(sort_last(x).detach(), ref.detach().sort(dim=-1).values)
    assert torch.equal(x.grad, ref.grad)


def test_accumulator_in_chunks_equals_one_shot():
    t = torch.randn(7, 3, 11)
    acc = PrototypeAccumulator()
    for chunk in t.split(3):
        acc.add(chunk)
    assert torch.allclose(acc.prototype(), quantile_prototype(t), atol=1e-6)


def test_position_count_mismatch_is_explained():
    with pytest.raises(ValueError, match="same resolution"):
        sort_matching_loss(torch.randn(1, 2, 5), torch.randn(2, 6))


def test_the_device_pass_equals_the_cpu_pass():
    """The torch pass (what CUDA and MPS run) and the numpy pass give the same rows and gradient on float32; half
    precision features are matched in float32 and get their gradient in their own dtype."""
    from vital.objectives.sort_matching import Prototype, _residual_pass, _residual_pass_torch

    x = _with_ties((2, 40, 2000))
    g = torch.Generator().manual_seed(3)
    targets = [Prototype(torch.randn(40, 2000, generator=g).sort(-1).values, torch.rand(2, 40, generator=g), 0.5),
               Prototype(torch.randn(2, 40, 2000, generator=g).sort(-1).values, None, 2.0)]
    rows_np, g_np = _residual_pass(x, targets, True, 1 / 80000)
    rows_t, g_t = _residual_pass_torch(x, targets, True, 1 / 80000)
    for a, b in zip(rows_np, rows_t, strict=True):
        assert torch.allclose(a, b, rtol=1e-5)
    assert torch.allclose(g_np, g_t, rtol=1e-6, atol=1e-12)
    rows_h, g_h = _residual_pass_torch(x.bfloat16(), targets, True, 1 / 80000)
    assert g_h.dtype == torch.bfloat16 and rows_h[0].dtype == torch.float32
    assert torch.allclose(g_h.float(), _residual_pass_torch(x.bfloat16().float(), targets, True, 1 / 80000)[1],
                          rtol=1e-2, atol=1e-6)
