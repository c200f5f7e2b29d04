"""The baselines' objectives: activation objectives against hand-computed values and loops, and DeepInversion's
BatchNorm statistics loss against an explicit computation, zero at matching statistics, and by gradcheck."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vital.errors import VitalError
from vital.objectives.activation import channel_activation, class_logit, direction
from vital.objectives.batchnorm import BatchNormStats

# ---------------------------------------------------------------- activation objectives


def test_class_logit_hand_values():
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert class_logit(logits, torch.tensor([2, 0])).tolist() == [-3.0, -4.0]
    with pytest.raises(VitalError, match="out of range"):
        class_logit(logits, torch.tensor([3, 0]))
    with pytest.raises(VitalError, match="one class per sample"):
        class_logit(logits, torch.tensor([1]))


def test_channel_activation_hand_values():
    act = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    # sample 0, channel 1: values 4..7 ; sample 1, channel 2: values 20..23
    ch = torch.tensor([1, 2])
    assert channel_activation(act, ch).tolist() == [-5.5, -21.5]
    assert channel_activation(act, ch, reduce="sum").tolist() == [-22.0, -86.0]
    assert channel_activation(act, ch, reduce="max").tolist() == [-7.0, -23.0]
    assert channel_activation(act.flatten(2), ch).tolist() == [-5.5, -21.5]  # (B, C, P) form
    assert channel_activation(act.mean(dim=(2, 3)), ch).tolist() == [-5.5, -21.5]  # (B, C) form
    with pytest.raises(VitalError, match=r"valid: 0\.\.2"):
        channel_activation(act, torch.tensor([0, 3]))
    with pytest.raises(VitalError, match="reduce"):
        channel_activation(act, ch, reduce="median")


def test_channel_activation_matches_loop_and_has_gradient():
    act = torch.randn(3, 5, 4, 6, requires_grad=True)
    ch = torch.tensor([4, 0, 2])
    loss = channel_activation(act, ch)
    expected = torch.stack([-act[b, ch[b]].mean() for b in range(3)])
    torch.testing.assert_close(loss, expected)
    loss.sum().backward()
    assert (act.grad[0, 4] != 0).all() and (act.grad[0, :4] == 0).all()


def test_direction_matches_loop():
    act = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    vecs = torch.randn(2, 4, dtype=torch.float64)
    expected = torch.zeros(2, dtype=torch.float64)
    for b in range(2):
        total = 0.0
        for i in range(3):
            for j in range(3):
                total += sum(act[b, c, i, j] * vecs[b, c] for c in range(4))
        expected[b] = -total / 9
    torch.testing.assert_close(direction(act, vecs), expected)
    shared = direction(act, vecs[0])
    torch.testing.assert_close(shared[1], -(act[1] * vecs[0].view(4, 1, 1)).sum(0).mean())
    with pytest.raises(VitalError, match="direction vectors"):
        direction(act, torch.ones(3))


# ---------------------------------------------------------------- DeepInversion BatchNorm statistics


def _net(dtype=torch.float32) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(),
                        nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5), nn.Tanh())
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.to(dtype).eval()


def _inputs_of_bns(net: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """The inputs of the BN layers, by running the sequence layer by layer."""
    seen = []
    for m in net:
        if isinstance(m, nn.BatchNorm2d):
            seen.append(x)
        x = m(x)
    return seen


def test_bn_loss_matches_explicit_computation():
    net = _net(torch.float64)
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    bns = [m for m in net if isinstance(m, nn.BatchNorm2d)]
    expected = 0.0
    for k, (bn, inp) in enumerate(zip(bns, _inputs_of_bns(net, x), strict=True)):
        sq_mean = sq_var = 0.0
        for c in range(inp.shape[1]):
            vals = inp[:, c].reshape(-1)
            mu = vals.sum() / vals.numel()
            var = ((vals - mu) ** 2).sum() / vals.numel()  # biased, as DeepInversion
            sq_mean += (mu - bn.running_mean[c]) ** 2
            sq_var += (var - bn.running_var[c]) ** 2
        expected += (10.0 if k == 0 else 1.0) * (sq_mean.sqrt() + sq_var.sqrt())
    with BatchNormStats(net) as stats:
        net(x)
        torch.testing.assert_close(stats.loss(), expected)
    with BatchNormStats(net, first_multiplier=1.0) as stats:
        net(x)
        assert stats.loss() < expected
        assert stats.state() == {"name": "batchnorm_stats", "layers": 2, "first_multiplier": 1.0, "weight": 1.0}


def test_bn_loss_zero_at_running_statistics_and_positive_otherwise():
    net = _net(torch.float64)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():  # set each BN's running stats to its input's batch stats, in forward order
        for k in range(2):
            inp = _inputs_of_bns(net, x)[k]
            bn = [m for m in net if isinstance(m, nn.BatchNorm2d)][k]
            bn.running_mean.copy_(inp.mean(dim=(0, 2, 3)))
            bn.running_var.copy_(inp.var(dim=(0, 2, 3), unbiased=False))
    with BatchNormStats(net) as stats:
        net(x)
        assert stats.loss().item() <= 1e-6
        net(x + 0.3 * torch.randn_like(x))
        assert stats.loss().item() > 1e-2


def test_bn_loss_gradcheck():
    net = _net(torch.float64)
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    with BatchNormStats(net) as stats:
        def f(inp):
            net(inp)
            return stats.loss()

        assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5)


def test_bn_stats_follow_the_latest_forward_and_remove():
    net = _net()
    stats = BatchNormStats(net)
    with pytest.raises(VitalError, match="not attached"):
        stats.loss()
    stats.attach()
    net(torch.zeros(2, 3, 5, 5))
    first = stats.loss()
    x = torch.randn(2, 3, 5, 5)
    net(x)
    second = stats.loss()
    with BatchNormStats(net) as fresh:
        net(x)
        torch.testing.assert_close(second, fresh.loss())
    assert not torch.allclose(first, second)
    stats.detach()
    assert all(not m._forward_pre_hooks for m in net.modules())
    net(x)
    with pytest.raises(VitalError, match="not attached"):
        stats.loss()


def test_bn_errors():
    with pytest.raises(VitalError, match="deepinversion needs BatchNorm layers; TinyNet has none; use method"):
        BatchNormStats(nn.Conv2d(3, 3, 1), name="TinyNet")
    with pytest.raises(VitalError, match="track_running_stats"):
        BatchNormStats(nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False)))
    net = _net().train()
    with BatchNormStats(net) as stats:
        net(torch.randn(2, 3, 4, 4))
        with pytest.raises(VitalError, match="eval"):
            stats.loss()
