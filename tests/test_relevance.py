"""LRP relevance at named layers: conservation, agreement with independent z+ computations, relevance splitting,
every supported architecture family, errors, restricted LRP and guided backprop."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import vital.relevance.chain.rules as rules
from vital.errors import VitalError
from vital.features import FeatureExtractor
from vital.relevance import RelevanceEngine, relevance_maps

TINY_EPS = 1e-12  # a stabiliser small enough to check conservation to float64 precision


def _fan_in(model: nn.Module) -> nn.Module:
    # torchvision's fan_out init makes MobileNet activations vanish (~1e-14) in a random network
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    return model


def _lite(name: str, size: int) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):
        return _fan_in(EfficientNet.from_name(name, image_size=size))


def _active_channels(model: nn.Module, target: str, x: torch.Tensor) -> torch.Tensor:
    """A channel with a large activation for each sample, different between samples."""
    a = FeatureExtractor(model, [target], view="raw")(x)[target].clamp(min=0)
    a = a.reshape(*a.shape[:2], -1).sum(2)
    chosen: list[int] = []
    for b in range(len(x)):
        chosen.append(next(int(c) for c in a[b].argsort(descending=True) if int(c) not in chosen))
    return torch.tensor(chosen)


def _start_totals(model, target, x, ch) -> torch.Tensor:
    a = FeatureExtractor(model, [target], view="raw")(x)[target]
    return a[torch.arange(x.shape[0]), ch].clamp(min=0).reshape(x.shape[0], -1).sum(1)


# ---- 1. conservation ---------------------------------------------------------------------------------------------

def test_conservation_through_conv_pools_linear():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),        # 0 1 2
        nn.MaxPool2d(3, stride=2, padding=1),                                            # 3
        nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False), nn.ReLU(),                  # 4 5 (grouped)
        nn.AvgPool2d(2), nn.Conv2d(8, 6, 1, bias=False), nn.ReLU(),                      # 6 7 8
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 5), nn.ReLU(),              # 9 10 11 12
    ).double().eval()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    layers = [str(i) for i in range(12, -1, -1)]
    ch = _active_channels(net, "12", x)
    out = RelevanceEngine(net, "12", layers, eps=TINY_EPS)(x, ch)
    total = _start_totals(net, "12", x, ch)
    assert (total > 0).all()
    for name in layers:
        sums = out[name].flatten(1).sum(1)
        torch.testing.assert_close(sums, total, rtol=1e-9, atol=0, msg=f"relevance not conserved at {name}")


def test_conservation_with_default_stabiliser_float32():
    torch.manual_seed(1)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 48, 48)
    ch = _active_channels(model, "layer4", x)
    out = RelevanceEngine(model, "layer4", ["layer3", "layer1", "conv1"])(x, ch)
    total = _start_totals(model, "layer4", x, ch)
    for name, r in out.items():  # eps = 1e-5 in every denominator costs a little relevance per layer
        torch.testing.assert_close(r.flatten(1).sum(1), total, rtol=1e-3, atol=0, msg=name)


# ---- 2. agreement with independent z+ computations ----------------------------------------------------------------

def _conv_matrix(w: torch.Tensor, in_shape, stride: int, pad_top: int, pad_left: int, out_hw, groups: int):
    """Dense matrix of a 2-D convolution, written out with explicit loops (plain Python floats for speed)."""
    co, cig, kh, kw = w.shape
    c, h, wd = in_shape
    ho, wo = out_hw
    wl = w.tolist()
    rows = []
    per_group = co // groups
    for o in range(co):
        g = o // per_group
        for y in range(ho):
            for x in range(wo):
                row = [0.0] * (c * h * wd)
                for ci in range(cig):
                    cin = g * cig + ci
                    for ky in range(kh):
                        for kx in range(kw):
                            iy, ix = y * stride + ky - pad_top, x * stride + kx - pad_left
                            if 0 <= iy < h and 0 <= ix < wd:
                                row[(cin * h + iy) * wd + ix] += wl[o][ci][ky][kx]
                rows.append(row)
    return torch.tensor(rows, dtype=w.dtype)


def _reference_lrp(net: nn.Sequential, x: torch.Tensor, channel: int, eps: float) -> dict[str, torch.Tensor]:
    """z+ LRP by explicit contribution matrices (one sample): R_i = sum_j c_ji R_j / (sum_i c_ji + b+_j + eps)."""
    acts = [x[0]]
    for layer in net:
        acts.append(layer(acts[-1][None])[0])
    r = torch.zeros_like(acts[-1])
    r[channel] = acts[-1][channel].clamp(min=0)
    out = {}
    for i in range(len(net) - 1, -1, -1):
        out[str(i)] = r
        layer, a = net[i], acts[i]
        if isinstance(layer, nn.ReLU):
            continue
        ap, an = a.clamp(min=0).flatten(), a.clamp(max=0).flatten()
        ho, wo = acts[i + 1].shape[1:]
        if isinstance(layer, nn.Conv2d):
            kh, kw = layer.weight.shape[2:]
            if layer.padding == "same":
                pad_top, pad_left = (kh - 1) // 2, (kw - 1) // 2
            else:
                pad_top, pad_left = layer.padding
            args = (a.shape, layer.stride[0], pad_top, pad_left, (ho, wo), layer.groups)
            mp = _conv_matrix(layer.weight.clamp(min=0), *args)
            mn = _conv_matrix(layer.weight.clamp(max=0), *args)
            contrib = mp * ap[None] + mn * an[None]
            bias = layer.bias.clamp(min=0).repeat_interleave(ho * wo)
        else:  # max pooling, redistributed as average pooling over the same windows
            k, s, p = layer.kernel_size, layer.stride, layer.padding
            w = torch.full((a.shape[0], 1, k, k), 1.0 / (k * k), dtype=a.dtype)
            contrib = _conv_matrix(w, a.shape, s, p, p, (ho, wo), a.shape[0]) * ap[None]
            bias = 0.0
        z = contrib.sum(1) + bias + eps
        r = (contrib * (r.flatten() / z)[:, None]).sum(0).reshape(a.shape)
    return out


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_agrees_with_explicit_zplus_on_vgg_like_net():
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),                     # signed image input, biases of both signs
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 5, 4, padding="same"), nn.ReLU(),                # asymmetric 'same' padding
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(5, 5, 3, padding=1, groups=5), nn.ReLU(),           # depthwise
    ).double().eval()
    for m in net:
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.bias, std=0.3)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    layers = [str(i) for i in range(len(net) - 1, -1, -1)]
    ours = RelevanceEngine(net, str(len(net) - 1), layers)(x, torch.tensor([2, 4]))
    for b, c in [(0, 2), (1, 4)]:
        ref = _reference_lrp(net, x[b:b + 1], c, rules.EPS)
        for name in layers:
            torch.testing.assert_close(ours[name][b], ref[name], rtol=1e-10, atol=1e-12, msg=f"layer {name}")


def test_agrees_with_zennit_zplus_at_the_input():
    from zennit.attribution import Gradient
    from zennit.composites import LayerMapComposite
    from zennit.rules import Norm, Pass, ZPlus

    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Identity(), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(6, 5, 1), nn.ReLU(),
    ).double().eval()
    for m in net:
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.bias, std=0.3)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    ch = torch.tensor([1, 3])
    ours = RelevanceEngine(net, "7", ["7", "0"])(x, ch)
    composite = LayerMapComposite([(nn.Conv2d, ZPlus(stabilizer=rules.EPS)), (nn.AvgPool2d, Norm(stabilizer=rules.EPS)),
                                   (nn.ReLU, Pass())])
    with Gradient(model=net, composite=composite) as attributor:
        _, theirs = attributor(x, ours["7"])
    torch.testing.assert_close(ours["0"], theirs, rtol=1e-8, atol=1e-12)


# ---- 3. relevance splitting at residual blocks -------------------------------------------------------------------

def _swap_block() -> nn.Sequential:
    """BasicBlock on 2 channels whose branch swaps the channels (M = (x1, x0)) and whose shortcut is identity."""
    block = torchvision.models.resnet.BasicBlock(2, 2)
    with torch.no_grad():
        block.conv1.weight.zero_()
        block.conv1.weight[0, 1, 1, 1] = block.conv1.weight[1, 0, 1, 1] = 1.0
        block.conv2.weight.zero_()
        block.conv2.weight[0, 0, 1, 1] = block.conv2.weight[1, 1, 1, 1] = 1.0
    block.bn1.eps = block.bn2.eps = 0.0  # identity BatchNorm
    return nn.Sequential(nn.Identity(), block).double().eval()


def test_residual_split_matches_hand_derivation():
    net = _swap_block()
    x = torch.rand(1, 2, 5, 5, dtype=torch.float64) + 0.1
    r = RelevanceEngine(net, "1", ["0"])(x, 0)["0"][0]
    x0, x1, eps = x[0, 0], x[0, 1], rules.EPS
    a = x0 + x1                                  # output channel 0 = M0 + S0 = x1 + x0
    rho = x1 / (x1 + x0 + eps)                   # |M| / (|M| + |S| + eps)
    expected_shortcut = (1 - rho) * a            # identity shortcut: stays on input channel 0
    expected_branch = rho * a * (x1 / (x1 + eps)) ** 2  # conv2 then conv1 (swap), each z+ with its eps
    torch.testing.assert_close(r[0], expected_shortcut, rtol=1e-12, atol=0)
    torch.testing.assert_close(r[1], expected_branch, rtol=1e-12, atol=0)


def test_residual_split_zero_over_zero_gives_no_nan():
    net = _swap_block()
    x = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    lrp = RelevanceEngine(net, "1", ["0"])(x, 0)["0"]
    assert torch.equal(lrp, torch.zeros_like(lrp))
    restricted = RelevanceEngine(net, "1", ["0"], method="lrp-restricted")(x, 0)["0"]
    expected = torch.zeros_like(restricted)  # the unit (0, 0) of channel 0; rho = 0/(0+0+eps) = 0: all via shortcut
    expected[0, 0, 0, 0] = 1.0
    assert torch.equal(restricted, expected)


# ---- 4. architecture families -------------------------------------------------------------------------------------

F64, F32 = torch.float64, torch.float32


def _small_head_vgg11() -> nn.Module:
    """torchvision VGG-11 with its own features; its 120M-parameter head (never reached here) is not built."""
    vgg = torchvision.models.vgg
    with torch.device("meta"):
        model = vgg.vgg11()
    model.features = vgg.make_layers(vgg.cfgs["A"])
    model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 10))
    for m in model.features:
        if isinstance(m, nn.Conv2d):  # torchvision's VGG init: bias-free start
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


FAMILIES = {
    # name: (model factory, target, layers, input size, dtype, conservation rtol with eps=1e-12 or None);
    # depthwise convolutions run in float32 (CPU float64 grouped convolutions are very slow)
    "resnet18": (lambda: torchvision.models.resnet18(), "layer4",
                 ["layer4", "layer3", "layer2.1", "layer2.0", "layer1", "maxpool", "conv1"], 48, F64, 1e-9),
    "resnet50": (lambda: torchvision.models.resnet50(), "layer3.1", ["layer3.0", "layer2", "layer1", "conv1"], 32, F64, 1e-9),
    "densenet121": (lambda: torchvision.models.densenet121(), "features.denseblock3",
                    ["features.transition2", "features.denseblock2", "features.transition1.conv",
                     "features.denseblock1", "features.pool0", "features.conv0"], 32, F64, 1e-9),
    "vgg11": (_small_head_vgg11, "features.12", ["features.10", "features.5", "features.0"], 32, F64, 1e-9),
    # linear-bottleneck blocks (no ReLU after the sum): where rho sends relevance into a branch whose value is
    # negative and has no positive contribution, z+ drops it; a small loss, bounded here
    "mobilenet_v2": (lambda: _fan_in(torchvision.models.mobilenet_v2()), "features.13",
                     ["features.10", "features.3", "features.1", "features.0.0"], 32, F32, 1e-3),
    "efficientnet_lite0": (lambda: _lite("efficientnet-lite0", 48), "_blocks.10",
                           ["_blocks.9", "_blocks.5", "_blocks.2", "_swish", "_conv_stem"], 48, F32, 1e-3),
    # SE gates and Swish (negative activations): no conservation claim, the rest must hold
    "efficientnet_b0_se": (lambda: _lite("efficientnet-b0", 48), "_blocks.5", ["_blocks.3", "_blocks.1", "_bn0"],
                           48, F32, None),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family(family):
    factory, target, layers, size, dtype, rtol = FAMILIES[family]
    torch.manual_seed(4)
    model = factory().to(dtype).eval()
    x = torch.randn(2, 3, size, size, dtype=dtype)
    ch = _active_channels(model, target, x)
    assert ch[0] != ch[1]
    engine = RelevanceEngine(model, target, layers, eps=TINY_EPS)
    out = engine(x, ch)
    shapes = {k: v.shape for k, v in FeatureExtractor(model, layers, view="raw")(x).items()}
    total = _start_totals(model, target, x, ch)
    assert (total > 0).all()
    for name in layers:
        r = out[name]
        assert r.shape == shapes[name], name
        assert torch.isfinite(r).all() and (r >= 0).all(), name
        assert not r.requires_grad and r.grad_fn is None
        assert r.flatten(1).sum(1).min() > 0, name
        if rtol is not None:
            torch.testing.assert_close(r.flatten(1).sum(1), total, rtol=rtol, atol=0, msg=name)
    single = engine(x[1:], ch[1:])
    for name in layers:
        scale = float(out[name][1].abs().max())
        rtol_b = 1e-9 if dtype == F64 else 1e-4
        torch.testing.assert_close(single[name][0], out[name][1], rtol=rtol_b, atol=rtol_b * scale, msg=name)


@pytest.mark.integration
def test_real_efficientnet_lite0_runs_in_batch():
    from vital.models import load_model

    model = load_model("efficientnet_lite0").module
    x = torch.randn(3, 3, 64, 64)
    layers = ["_blocks.12", "_blocks.6", "_blocks.2", "_conv_stem"]
    engine = RelevanceEngine(model, "_blocks.13", layers)
    out = engine(x, torch.tensor([5, 17, 100]))
    shapes = {k: v.shape for k, v in FeatureExtractor(model, layers, view="raw")(x).items()}
    for name in layers:
        assert out[name].shape == shapes[name]
        assert torch.isfinite(out[name]).all() and (out[name] >= 0).all()
    alone = engine(x[2:], torch.tensor([100]))
    for name in layers:
        torch.testing.assert_close(alone[name][0], out[name][2], rtol=1e-4, atol=1e-7)


def test_container_name_is_its_last_block_and_capture_is_by_name():
    torch.manual_seed(5)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 48, 48)
    out = RelevanceEngine(model, "layer3", ["layer1", "layer1.1", "layer1.0"])(x, 7)
    assert torch.equal(out["layer1"], out["layer1.1"])
    assert out["layer1.0"].shape == out["layer1.1"].shape  # same shape, different layers
    assert not torch.allclose(out["layer1.0"], out["layer1.1"])


def test_model_is_left_unchanged_and_helper_agrees():
    torch.manual_seed(6)
    model = torchvision.models.resnet18().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    engine = RelevanceEngine(model, "layer2", ["layer1"])
    a = engine(x, torch.tensor([1, 2]))["layer1"]
    b = relevance_maps(model, x, "layer2", torch.tensor([1, 2]), ["layer1"])["layer1"]
    assert torch.equal(a, b)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


# ---- 5. errors -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet():
    return torchvision.models.resnet18().eval()


def test_unknown_target_names_closest(resnet):
    with pytest.raises(VitalError, match=r"no target layer 'layer9'.*Closest: .*layer\d"):
        RelevanceEngine(resnet, "layer9", ["layer1"])


def test_unknown_capture_layer(resnet):
    with pytest.raises(VitalError, match="no layer 'layr1'.*Closest: layer1"):
        RelevanceEngine(resnet, "layer3", ["layr1"])


def test_layer_downstream_of_target(resnet):
    with pytest.raises(VitalError, match="'layer3' comes after the target layer 'layer2'"):
        RelevanceEngine(resnet, "layer2", ["layer1", "layer3"])


def test_layer_inside_a_block_falls_back_to_the_modified_gradient(resnet):
    """The chain computes a residual block as a whole; a layer inside one gets the modified-gradient rules, said."""
    with pytest.warns(UserWarning, match="modified-gradient LRP rules.*inside block 'layer1.0'"):
        engine = RelevanceEngine(resnet, "layer3", ["layer1.0.conv2"])
    assert engine.backend == "modified-gradient"
    out = engine(torch.randn(2, 3, 32, 32), 5)["layer1.0.conv2"]
    assert out.shape == (2, 64, 8, 8) and out.min() >= 0 and out.sum() > 0


def test_layers_after_the_target_are_refused(resnet):
    with pytest.raises(VitalError, match="comes after the target layer"):
        RelevanceEngine(resnet, "layer2.1", ["conv1", "layer3"])
    with pytest.warns(UserWarning):
        engine = RelevanceEngine(resnet, "layer1.0.conv1", ["layer2.0.conv1"])
    with pytest.raises(VitalError, match="'layer2.0.conv1' comes after the target layer 'layer1.0.conv1'"):
        engine(torch.randn(1, 3, 32, 32), 0)


def test_channel_out_of_range(resnet):
    engine = RelevanceEngine(resnet, "layer2", ["layer1"])
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(VitalError, match="channel 128 is out of range.*128 channels"):
        engine(x, torch.tensor([0, 128]))
    with pytest.raises(VitalError, match="channel -1 is out of range"):
        engine(x, -1)
    with pytest.raises(VitalError, match="one channel per sample"):
        engine(x, torch.tensor([0, 1, 2]))


def test_module_without_rule_and_guided_backprop_without_relus():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Conv2d(4, 4, 3)).eval()
    with pytest.warns(UserWarning, match="no rule for module type 'GELU'"):
        engine = RelevanceEngine(net, "2", ["0"])
    assert engine.backend == "modified-gradient"
    assert RelevanceEngine(net, "0", ["0"]).backend == "chain"  # upstream of the GELU
    assert engine(torch.randn(1, 3, 9, 9), 1)["0"].shape == (1, 4, 7, 7)
    with pytest.raises(VitalError, match="guided backprop needs a ReLU network.*GELU; use relevance='lrp' or 'none'"):
        RelevanceEngine(net, "2", ["0"], method="guided-backprop")
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)).eval()
    with pytest.raises(VitalError, match="no nn.ReLU modules"):
        RelevanceEngine(plain, "1", ["0"], method="guided-backprop")


def test_unknown_method_and_training_mode(resnet):
    with pytest.raises(VitalError, match="unknown relevance method"):
        RelevanceEngine(resnet, "layer2", ["layer1"], method="lrp-eps")
    model = torchvision.models.resnet18().train()
    engine = RelevanceEngine(model, "layer2", ["layer1"])
    with pytest.raises(VitalError, match=r"model.eval\(\)"):
        engine(torch.randn(2, 3, 32, 32), 0)


# ---- 6. lrp-restricted and guided backprop -------------------------------------------------------------------------

def test_restricted_starts_from_the_most_aligned_unit():
    torch.manual_seed(7)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 48, 48)
    ch = torch.tensor([3, 9])
    out = RelevanceEngine(model, "layer2", ["layer2", "layer1"], method="lrp-restricted")(x, ch)
    with torch.no_grad():
        a = FeatureExtractor(model, ["layer2"], view="raw")(x)["layer2"]
    for b in range(2):
        best, where = -1.0, None
        for h in range(a.shape[2]):
            for w in range(a.shape[3]):
                cos = float(a[b, ch[b], h, w] / a[b, :, h, w].norm())  # explicit loop over positions
                if cos > best:
                    best, where = cos, (h, w)
        start = out["layer2"][b]
        assert torch.count_nonzero(start) == 1 and start[ch[b], where[0], where[1]] == 1.0
        assert abs(float(out["layer1"][b].sum()) - 1.0) < 1e-3  # that unit's relevance reaches layer1


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g.clamp(min=0) * (x > 0)


def test_guided_backprop_matches_independent_gradient():
    torch.manual_seed(8)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(6, 4, 3, padding=1), nn.ReLU()).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    ch = torch.tensor([1, 3])
    out = RelevanceEngine(net, "6", ["2", "0"], method="guided-backprop")(x, ch)
    # independent: rerun the layers by hand with a guided ReLU and differentiate the channel means
    h0 = net[0](x)
    h2 = net[2](_GuidedReLU.apply(h0))
    a = _GuidedReLU.apply(net[5](net[4](_GuidedReLU.apply(h2))))
    score = sum(a[b, ch[b]].mean() for b in range(2))
    g2, g0 = torch.autograd.grad(score, [h2, h0])
    torch.testing.assert_close(out["2"], g2.clamp(min=0))
    torch.testing.assert_close(out["0"], g0.clamp(min=0))
    assert all(not m._forward_hooks for m in net.modules())


def test_guided_backprop_on_resnet_is_nonnegative_detached_and_batch_independent():
    torch.manual_seed(9)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 48, 48)
    engine = RelevanceEngine(model, "layer3", ["layer2", "layer1", "conv1"], method="guided-backprop")
    out = engine(x, torch.tensor([4, 11]))
    alone = engine(x[1:], torch.tensor([11]))
    for name, r in out.items():
        assert (r >= 0).all() and r.grad_fn is None and not r.requires_grad
        assert r[1].sum() > 0
        torch.testing.assert_close(alone[name][0], r[1], rtol=1e-4, atol=1e-7)
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("method", ["lrp", "lrp-restricted"])
def test_shared_forward_gives_the_model_features_and_the_same_relevance(resnet, method):
    """features_and_relevance: features equal the model's own layer outputs (with a graph to x), relevance equals
    a separate engine call."""
    layers = ["conv1", "layer1", "layer2.0"]
    engine = RelevanceEngine(resnet, "layer3.1", layers, method)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    feats, rel = engine.features_and_relevance(x, torch.tensor([3, 11]))
    ref = FeatureExtractor(resnet, layers, view="raw")(x)
    separate = engine(x, torch.tensor([3, 11]))
    for n in layers:
        assert torch.allclose(feats[n], ref[n], atol=1e-5) and torch.allclose(rel[n], separate[n], atol=1e-6)
        assert feats[n].requires_grad and not rel[n].requires_grad
    feats["layer2.0"].sum().backward()
    g = x.grad.clone()
    x.grad = None
    ref["layer2.0"].sum().backward()
    assert torch.allclose(g, x.grad, atol=1e-4)


# ---- canonization and the conserving fallback ----------------------------------------------------------------------

def test_folded_batchnorm_gives_the_same_forward():
    from vital.relevance.chain.rules import fold_batchnorm

    torch.manual_seed(5)
    conv, bn = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=True), nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.uniform_(-2, 2)  # negative scales too
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.1, 3)
    bn.eval()
    x = torch.randn(2, 4, 9, 9)
    w, b = fold_batchnorm(conv, bn)
    torch.testing.assert_close(F.conv2d(x, w, b, padding=1, groups=2), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_folding_uses_the_batchnorm_sign_in_the_rule():
    """A BatchNorm with a negative scale flips which contributions are positive: folded, z+ follows the output."""
    conv, bn = nn.Conv2d(2, 1, 1, bias=False), nn.BatchNorm2d(1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
        bn.weight.fill_(-1.0)
    net = nn.Sequential(nn.Identity(), conv, bn.eval(), nn.ReLU()).eval()
    x = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)  # conv: 1 - 3 = -2; bn: +2 (the -3 * -1 part drives it)
    folded = RelevanceEngine(net, "3", ["0"], eps=TINY_EPS)(x, 0)["0"].flatten()
    torch.testing.assert_close(folded, torch.tensor([0.0, 2.0]))
    passed = RelevanceEngine(net, "3", ["0"], eps=TINY_EPS, fold_batchnorm=False)(x, 0)["0"].flatten()
    torch.testing.assert_close(passed, torch.tensor([2.0, 0.0]))  # BatchNorm as identity credits the other input


def test_w_square_fallback_by_hand():
    """An all-negative filter on non-negative input has z+ = 0: its output's relevance goes back in proportion to
    w^2 over the inputs of its window (zero padding excluded), and nothing is lost."""
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(-torch.arange(1.0, 10.0).view(1, 1, 3, 3))
    net = nn.Sequential(nn.ReLU(), conv).double().eval()
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    r_out = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    r_out[0, 0, 0, 0] = 1.0  # a corner: only the lower-right 2x2 of the kernel sees the image
    engine = RelevanceEngine(net, "1", ["0"], eps=TINY_EPS)
    h, ctxs, _ = engine.rules._forward(x)
    step = engine.rules.steps[1]
    r_in = step.relevance(r_out, ctxs[1])
    w2 = torch.arange(1.0, 10.0, dtype=torch.float64).view(3, 3) ** 2
    expected = torch.zeros(4, 4, dtype=torch.float64)
    expected[:2, :2] = w2[1:, 1:] / w2[1:, 1:].sum()
    torch.testing.assert_close(r_in[0, 0], expected)
    engine = RelevanceEngine(net, "1", ["0"], eps=TINY_EPS, conserve=False)
    assert float(engine.rules.steps[1].relevance(r_out, ctxs[1]).sum()) == 0.0  # plain z+ drops it


@pytest.mark.integration
def test_real_efficientnet_lite0_conserves_relevance_per_block(lite0):
    from vital.references.photos import photo_references

    x = photo_references(967, n=2).load(lite0.transform())
    blocks = [f"_blocks.{i}" for i in range(12, -1, -1)] + ["_conv_stem"]
    out = RelevanceEngine(lite0.module, "_blocks.12", blocks)(x, torch.tensor([5, 40]))
    sums = torch.stack([out[b].flatten(1).sum(1) for b in blocks])
    assert (sums[0] > 0).all()
    ratios = sums[1:] / sums[:-1]
    assert ratios.min() > 0.99 and ratios.max() < 1.01, ratios
    plain = RelevanceEngine(lite0.module, "_blocks.12", blocks, conserve=False)(x, torch.tensor([5, 40]))
    assert float(plain["_conv_stem"].sum()) < 0.5 * float(out["_conv_stem"].sum())  # what the fallback keeps


def test_resnet_conserves_relevance_per_block():
    torch.manual_seed(2)
    model = _fan_in(torchvision.models.resnet18()).eval()
    x = torch.randn(2, 3, 64, 64)
    blocks = ["layer4.1", "layer4.0", "layer3.1", "layer3.0", "layer2.1", "layer2.0", "layer1.1", "layer1.0"]
    ch = _active_channels(model, "layer4.1", x)
    out = RelevanceEngine(model, "layer4.1", blocks)(x, ch)
    sums = torch.stack([out[b].flatten(1).sum(1) for b in blocks])
    ratios = sums[1:] / sums[:-1]
    assert ratios.min() > 0.99 and ratios.max() < 1.01, ratios
