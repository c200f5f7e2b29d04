"""Receptive fields measured by `receptive_field` against values derived by hand, and against the real network."""

import pytest
import torch
import torchvision
from torch import nn

from vital.errors import VitalError
from vital.references.receptive_field import ReceptiveField, receptive_field


def small_net() -> nn.Sequential:
    # conv3x3 s1 p1 -> maxpool2 -> conv3x3 s2 p1. By hand, with j the input px per step, r the field size and c the
    # centre of unit 0: conv1 j=1 r=3 c=0; pool j=2 r=3+1*1=4 c=0+0.5*1=0.5; conv2 j=4 r=4+2*2=8 c=0.5+(1-1)*2=0.5.
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3, 2, 1))


@pytest.mark.parametrize("layer, stride, size, offset", [("0", 1, 3, 0.0), ("1", 1, 3, 0.0), ("2", 2, 4, 0.5),
                                                         ("3", 4, 8, 0.5)])
def test_small_net_matches_hand_derivation(layer, stride, size, offset):
    rf = receptive_field(small_net(), layer, size=32)
    assert rf == ReceptiveField((stride, stride), (size, size), (offset, offset))


def test_unpadded_and_anisotropic_kernels():
    # 5x5 stride 2 without padding: unit 0 sees pixels 0..4, centre 2.
    assert receptive_field(nn.Sequential(nn.Conv2d(3, 2, 5, 2, 0)), "0", 32) == ReceptiveField((2, 2), (5, 5), (2.0, 2.0))
    # kernel (3, 5) with padding (0, 2): rows 0..2 (centre 1), columns -2..2 (centre 0).
    net = nn.Sequential(nn.Conv2d(3, 2, (3, 5), 1, (0, 2)))
    assert receptive_field(net, "0", 32) == ReceptiveField((1, 1), (3, 5), (1.0, 0.0))


@pytest.mark.parametrize("layer, stride, size", [("layer1", 4, 43), ("layer2", 8, 99)])
def test_resnet18_matches_hand_derivation(layer, stride, size):
    # conv1 7x7 s2 p3: r=7, j=2, c=0. maxpool 3x3 s2 p1: r=7+2*2=11, j=4, c=0+(1-1)*2=0.
    # layer1 = 2 BasicBlocks = 4 convs 3x3 s1 at j=4: r=11+4*2*4=43 (the residual path is never longer).
    # layer2: first conv 3x3 s2 at j=4: r=43+2*4=51, j=8, c=0; 3 more 3x3 convs at j=8: r=51+3*2*8=99.
    rf = receptive_field(torchvision.models.resnet18(weights=None), layer, size=128)
    assert rf == ReceptiveField((stride, stride), (size, size), (0.0, 0.0))


def test_field_is_exactly_where_the_real_network_looks():
    # On the real (nonlinear, random) network, perturbing a pixel changes unit (2, 3) iff it lies in the field.
    net = small_net().double()
    rf = receptive_field(net, "3", 32)
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    y0 = net(x)[0, :, 2, 3]
    top = round(rf.offset[0] + 2 * rf.stride[0] - (rf.size[0] - 1) / 2)
    left = round(rf.offset[1] + 3 * rf.stride[1] - (rf.size[1] - 1) / 2)
    for dy, dx, inside in [(0, 0, True), (rf.size[0] - 1, rf.size[1] - 1, True), (-1, 2, False),
                           (rf.size[0], 2, False), (2, -1, False), (2, rf.size[1], False)]:
        xp = x.clone()
        xp[0, :, top + dy, left + dx] += 10.0
        changed = not torch.equal(net(xp)[0, :, 2, 3], y0)
        assert changed == inside, (dy, dx)


def test_global_gate_and_non_spatial_layer():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, 1, 1)

        def forward(self, x):
            y = self.conv(x)
            return y * torch.sigmoid(y.mean((2, 3), keepdim=True))

    net = nn.Sequential(Gate(), nn.Flatten(), nn.Linear(4 * 16 * 16, 2))
    rf = receptive_field(net, "0", 16)
    assert rf.is_global and rf.patch_size(16) == (16, 16)
    with pytest.raises(VitalError, match="outputs vectors of shape \\(1024,\\), not a map"):
        receptive_field(net, "1", 16)


def test_patch_boxes_rule():
    rf = ReceptiveField((4, 4), (8, 8), (0.5, 0.5))
    h, w = torch.tensor([0, 2, 7]), torch.tensor([1, 3, 7])
    # centre 4i+0.5 -> pixels 4i-3 .. 4i+4, shifted inside [0, 32)
    assert rf.boxes(h, w, 32).tolist() == [[1, 0, 9, 8], [9, 5, 17, 13], [24, 24, 32, 32]]
    assert ReceptiveField((4, 4), (3, 3), (0.0, 0.0)).patch_size(32) == (8, 8)  # at least two strides
    assert ReceptiveField((16, 16), (99, 99), (0.0, 0.0)).patch_size(64) == (64, 64)  # at most the image


def test_effective_field_of_a_pure_average_is_the_square_that_holds_the_mass():
    """A 9x9 box filter: the centre unit's input gradient is uniform on a 9x9 square centred on a pixel, so a
    centred square of whole pixels holds 1/81, 9/81, 25/81, 49/81 or all of it: 1/2 needs a side of 7, 3/4 all 9."""
    from vital.references.receptive_field import effective_size

    conv = nn.Conv2d(3, 1, 9, padding=4, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    net = nn.Sequential(conv)
    x = torch.rand(2, 3, 33, 33, generator=torch.Generator().manual_seed(0))
    assert effective_size(net, "0", x, mass=1.0) == (9, 9)
    assert effective_size(net, "0", x, mass=0.75) == (9, 9)
    assert effective_size(net, "0", x, mass=0.5) == (7, 7)
    from vital.references.receptive_field import effective_field

    assert effective_field(net, "0", x)[1] == pytest.approx((0.0, 0.0))  # unit (0, 0) looks at pixel (0, 0)
    # a Gaussian-weighted filter concentrates the mass: the effective field is smaller than the theoretical one
    yy, xx = torch.meshgrid(torch.arange(9.0) - 4, torch.arange(9.0) - 4, indexing="ij")
    with torch.no_grad():
        conv.weight.copy_(torch.exp(-(yy ** 2 + xx ** 2) / 4).expand(1, 3, 9, 9))
    side = effective_size(net, "0", x, mass=0.75)[0]
    assert 3 <= side < 9


def test_effective_patches_lie_inside_the_image_and_contain_the_unit():
    rf = ReceptiveField((32, 32), (224, 224), (15.5, 15.5), is_global=True, effective=(150, 150))
    assert rf.patch_size(224) == (150, 150)
    h, w = torch.arange(7).repeat_interleave(7), torch.arange(7).repeat(7)
    boxes = rf.boxes(h, w, 224)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 224).all()
    assert ((boxes[:, 2] - boxes[:, 0]) == 150).all() and ((boxes[:, 3] - boxes[:, 1]) == 150).all()
    cy, cx = rf.centre(h.float(), w.float())
    assert ((boxes[:, 0] <= cx) & (cx < boxes[:, 2]) & (boxes[:, 1] <= cy) & (cy < boxes[:, 3])).all()


def test_fields_are_measured_once_per_architecture_and_cached(monkeypatch):
    """Several layers share one measurement; a second call reads the cache (no copy of the network is made), and
    another architecture is measured afresh."""
    import torchvision

    from vital.references import receptive_field as rfm

    net = torchvision.models.resnet18(weights=None).eval()
    layers = ["layer1", "layer2.0.conv1", "layer3"]
    first = rfm.receptive_fields(net, layers, 64)
    assert first == {n: rfm.receptive_field(net, n, 64) for n in layers}
    monkeypatch.setattr(rfm, "_linear_positive", lambda m: (_ for _ in ()).throw(AssertionError("measured again")))
    assert rfm.receptive_fields(torchvision.models.resnet18(weights=None), layers, 64) == first
    with pytest.raises(AssertionError, match="measured again"):
        rfm.receptive_fields(torchvision.models.resnet34(weights=None), layers, 64)
