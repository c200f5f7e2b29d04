"""The relevance backends: which one `select_backend` picks and why, their capabilities, the explicit choice for a
layer inside a block, the one z+ convolution (its geometry against torch's own convolution, and both LRP backends
agreeing where both apply), and the chain built from tables passed in."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from vital.errors import VitalError
from vital.relevance import RelevanceEngine, select_backend
from vital.relevance.chain.build import BASIC_LEAF_RULES, build_chain
from vital.relevance.chain.families import FAMILY_BUILDERS, default_chain
from vital.relevance.chain.rules import Pass
from vital.relevance.modified_gradient import ModifiedGradientRelevance
from vital.relevance.readout import Readout
from vital.relevance.zplus import ConvGeometry, crop, same_padding


@pytest.fixture(autouse=True)
def announcements_kept():
    """The modified-gradient choice is announced once per model type and reason: these tests, which ignore the
    warnings, must not use up an announcement that another test expects."""
    from vital.relevance import choice as backend

    before = set(backend._ANNOUNCED)
    yield
    backend._ANNOUNCED.intersection_update(before)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


def test_the_chain_is_chosen_where_it_lists_every_module(resnet):
    choice = select_backend(resnet, "layer3", ["layer2", "conv1"], "lrp")
    assert choice.backend.name == "chain" and choice.backend.joint_forward
    assert "rule chain lists every module" in choice.reason


def test_guided_backprop_is_chosen_when_asked(resnet):
    choice = select_backend(resnet, "layer3", ["layer1.0.conv1"], "guided-backprop")
    assert choice.backend.name == "guided" and not choice.backend.joint_forward
    assert choice.reason == "guided backprop was asked for"


def test_a_module_without_a_rule_gets_the_modified_gradient_with_the_reason():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Conv2d(4, 4, 3)).eval()
    with warnings.catch_warnings():  # announced once per model type and reason: maybe by an earlier test
        warnings.simplefilter("ignore")
        choice = select_backend(net, "2", ["0"], "lrp")
    assert choice.backend.name == "modified-gradient" and not choice.backend.joint_forward
    assert choice.reason == "the rule chain does not apply: LRP has no rule for module type 'GELU' (layer '1')"


def test_a_layer_inside_a_block_is_an_explicit_choice_of_the_modified_gradient(resnet):
    """The chain computes a residual block as a whole, so a layer inside one is answered by the modified-gradient
    rules: said in the reason, and the maps are exactly that backend's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = RelevanceEngine(resnet, "layer3", ["layer1.0.conv2", "layer1"])
    assert engine.reason == ("the rule chain does not apply: layer 'layer1.0.conv2' is inside block 'layer1.0', "
                             "which the rule chain computes as a whole (name 'layer1.0' to use the chain)")
    assert isinstance(engine.rules, ModifiedGradientRelevance)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    got = engine(x, torch.tensor([2, 7]))
    want = ModifiedGradientRelevance(resnet, "layer3", ["layer1.0.conv2", "layer1"], "lrp")(x, torch.tensor([2, 7]))
    for n in want:
        assert torch.equal(got[n], want[n])
    with pytest.raises(VitalError, match="needs the LRP rule chain, and the modified-gradient backend runs here"):
        engine.features_and_relevance(x, 2)


def test_unknown_names_are_refused_before_any_backend_is_chosen(resnet):
    with pytest.raises(VitalError, match="no layer 'layer1.0.conv9'"):
        select_backend(resnet, "layer3", ["layer1.0.conv9"], "lrp")
    with pytest.raises(VitalError, match="unknown relevance method"):
        select_backend(resnet, "layer3", ["layer1"], "lrp-eps")


def test_the_chain_takes_its_tables_as_arguments():
    """build_chain knows only the basic leaf rules; a family's builder or an extra leaf rule is passed in."""
    class Doubling(nn.Module):
        def forward(self, x):
            return 2 * x

    net = nn.Sequential(nn.Conv2d(3, 4, 3), Doubling(), nn.ReLU())
    bare = build_chain(net, [], {})
    assert type(bare.steps[1]).__name__ == "Unsupported"
    ruled = build_chain(net, [(Doubling, lambda n, m: Pass(n, m, None))], {})
    assert isinstance(ruled.steps[1], Pass) and len(ruled.steps) == 3
    assert len(BASIC_LEAF_RULES) > 0 and torchvision.models.resnet.ResNet in FAMILY_BUILDERS
    assert type(build_chain(torchvision.models.resnet18(), [], {}).steps[0]).__name__ == "Unsupported"
    assert default_chain(torchvision.models.resnet18()).index()["layer4"] > 0


# ---- the one z+ convolution ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel,stride,dilation,groups", [(2, 1, 1, 1), (4, 1, 2, 2), (3, 1, 1, 3)])
def test_same_padding_and_the_adjoint_match_torch(kernel, stride, dilation, groups):
    """'same' made explicit gives torch's output (an even kernel: asymmetric padding); the adjoint is the
    convolution's transpose: <conv(x), s> = <x, conv^T(s)>."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    w = torch.randn(6, 6 // groups, kernel, kernel, dtype=torch.float64)
    geo = ConvGeometry.of(w, stride, "same", dilation, groups)
    total = dilation * (kernel - 1)
    assert same_padding((kernel, kernel), (dilation, dilation)) == (total // 2, total - total // 2) * 2
    a = F.pad(x, geo.pre_pad) if geo.pre_pad else x
    y = geo.conv(a, w, None)
    torch.testing.assert_close(y, F.conv2d(x, w, None, stride, "same", dilation, groups))
    s = torch.randn_like(y)
    back = geo.adjoint(s, w, a.shape[-2:])
    torch.testing.assert_close((y * s).sum(), (a * back).sum())
    if geo.pre_pad:
        assert crop(back, geo.pre_pad).shape == x.shape


@pytest.mark.parametrize("stride,padding,dilation,groups", [(2, 1, 1, 1), (1, 0, 1, 1), (1, 2, 2, 2)])
def test_both_lrp_backends_apply_the_same_z_plus_rule(stride, padding, dilation, groups):
    """On convolutions and ReLUs alone the rule chain (without its w^2 fallback) and the modified-gradient rules
    are the same z+ rule: equal relevance, to float64 precision."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride, padding, dilation), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, 1, padding, dilation, groups=groups), nn.ReLU(),
                        nn.Conv2d(8, 6, 1), nn.ReLU()).double().eval()
    x = torch.randn(2, 3, 17, 17, dtype=torch.float64)
    units = Readout(channels=torch.tensor([1, 4]))
    chain = RelevanceEngine(net, "5", ["3", "1", "0"], conserve=False)
    assert chain.backend == "chain"
    mg = ModifiedGradientRelevance(net, "5", ["3", "1", "0"], "lrp")
    a, b = chain(x, units), mg(x, units)
    for n in a:
        assert a[n].sum() > 0
        torch.testing.assert_close(a[n], b[n], rtol=1e-9, atol=1e-12)
