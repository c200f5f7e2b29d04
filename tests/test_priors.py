import math

import torch

from vital.objectives.priors import l2_norm, tv_l1, tv_l2


def test_hand_derived_values():
    # One 2x2 single-channel image [[0, 1], [2, 4]].
    x = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    # horizontal: -1, -2; vertical: -2, -3; anti-diagonal x[1,0]-x[0,1] = 1; diagonal x[0,0]-x[1,1] = -4
    assert torch.allclose(tv_l2(x), torch.tensor([math.sqrt(5) + math.sqrt(13) + 1 + 4]))
    assert torch.allclose(tv_l1(x), torch.tensor([1.5 + 2.5 + 1 + 4]))
    assert torch.allclose(l2_norm(x), torch.tensor([math.sqrt(21)]))


def test_per_sample_in_a_batch():
    a, b = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    both = torch.cat([a, b])
    for f in (tv_l2, tv_l1, l2_norm):
        assert torch.allclose(f(both), torch.cat([f(a), f(b)]))
