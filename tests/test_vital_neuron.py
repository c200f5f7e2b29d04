"""VITAL for channels: masks and importance by hand, both mask rules against independent computations, relevance
as a constant weight, upstream-only matching, the target term, errors, and a store mined by `vital.mine` used as
references."""

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import vital
from vital.errors import VitalError
from vital.features import FeatureExtractor, upstream_of
from vital.methods import RunOptions, build_recipe
from vital.methods.vital import VitalOptions
from vital.models import load_model
from vital.objectives.alignment import channel_importance, relevance_mask
from vital.objectives.base import Views
from vital.references.images import from_images


@pytest.fixture
def resnet():
    torch.manual_seed(0)
    return load_model(torchvision.models.resnet18(weights=None), size=64, name="resnet18-small")


@pytest.fixture
def refs():
    rng = np.random.default_rng(0)
    return from_images([Image.fromarray(rng.integers(0, 255, (72, 72, 3), dtype=np.uint8)) for _ in range(3)])


def test_mask_and_importance_by_hand():
    r = torch.tensor([[[1.0, 3.0, 2.0], [0.0, 0.0, 0.0]]])  # (1 image, 2 channels, 3 positions)
    m = relevance_mask(r)
    assert torch.allclose(m[0, 0], torch.tensor([0.0, 2.0, 1.0]) / (2 + 1e-6))
    assert torch.equal(m[0, 1], torch.zeros(3))  # constant relevance: mask 0, no NaN
    two = torch.stack([r[0], torch.tensor([[0.0, 1.0, 0.0], [4.0, 0.0, 0.0]])])
    # maxima per channel: image 0 (3, 0) -> (1, 0); image 1 (1, 4) -> (0, 1); mean over images (0.5, 0.5)
    assert torch.allclose(channel_importance(two), torch.tensor([0.5, 0.5]), atol=1e-5)


def test_only_layers_upstream_of_the_target_are_matched(resnet):
    cands = ["conv1", "layer1", "layer2", "layer3", "layer4"]
    net = resnet.module
    assert upstream_of(net, "layer4.1", cands, size=64) == ["conv1", "layer1", "layer2", "layer3"]
    assert upstream_of(net, "layer3.0", cands, size=64) == ["conv1", "layer1", "layer2"]
    assert upstream_of(net, "layer2", cands, size=64) == ["conv1", "layer1"]
    assert upstream_of(net, "layer2.1", ["layer2", "layer2.0", "layer1.1.bn2"], size=64) == ["layer2.0", "layer1.1.bn2"]


@pytest.mark.parametrize("relevance", ["lrp", "lrp-restricted", "guided-backprop", "none"])
@pytest.mark.parametrize("mask", ["reference", "multiply"])
def test_neuron_run_lowers_its_loss(resnet, refs, relevance, mask):
    res = vital.visualize(resnet, [vital.Channel("layer3.1", 4), vital.Channel("layer3.1", 9)], refs, steps=12,
                          warmup=2, jitter=2, relevance=relevance, mask=mask, progress=False)
    assert res.history.shape == (12, 2) and torch.isfinite(res.history).all()
    assert res.history[-3:].mean() < res.history[:3].mean()
    assert res.record["recipe"]["matched_layers"] == ["conv1", "layer1.1", "layer2.1"]
    alignment = res.record["objective"]["terms"][1]
    assert alignment["layer_weights"][0] == 0.1 and alignment["mask"] == mask
    assert res.record["parameterization"]["name"] == "fourier" and res.record["recipe"]["param"] == "fourier"


def _recipe(resnet, refs, channel=4, **opts):
    rec = build_recipe("vital", resnet, [vital.Channel("layer3.1", channel)], [refs], RunOptions(steps=1),
                       VitalOptions(**opts))
    obj = rec.objective.terms[1]  # priors + alignment
    obj.prepare(1)
    return obj


def test_multiply_rule_weights_are_constants(resnet, refs):
    """The gradient equals the one obtained with the synthetic min-max masks precomputed and frozen."""
    obj = _recipe(resnet, refs, mask="multiply", unweighted=0.0, target_weight=0.0, activation=0.0)
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    obj(Views.of(x)).sum().backward()
    rel = obj.engine(x.detach(), obj.channels)
    x2 = x.detach().clone().requires_grad_(True)
    feats = FeatureExtractor(resnet.module, obj.layers)(x2)
    from vital.objectives.sort_matching import sort_matching_loss

    manual = sum(w * sort_matching_loss(relevance_mask(rel[n].flatten(2)) * feats[n], obj.q[n], obj.importance[n])
                 for n, w in zip(obj.layers, obj.weights, strict=True))
    manual.sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-6)


def test_reference_rule_loss_by_hand(resnet, refs):
    """Mask rule "reference": the prototype is the mean over references of each one's relevance-weighted quantiles
    (computed here in numpy, one row at a time: the first sorted value whose cumulative weight reaches each level),
    and the loss is the importance-weighted squared difference to the sorted synthetic features; plus the unweighted
    and target terms, less the default activation term (weight 1: the target channel's mean activation)."""
    obj = _recipe(resnet, refs, mask="reference", unweighted=0.5, target_weight=2.0)
    assert obj.activation == 1.0
    pixels = refs.load(resnet.transform())
    layers = [*obj.layers, "layer3.1"]
    feats = {n: f.double() for n, f in FeatureExtractor(resnet.module, layers)(pixels).items()}
    rel = {n: r.flatten(2) for n, r in obj.engine(pixels, torch.full((3,), 4)).items()}
    for n in obj.layers:
        m = relevance_mask(rel[n]).double().numpy()
        f = feats[n].numpy()
        protos = np.zeros(f.shape[1:])
        for i in range(3):
            for c in range(f.shape[1]):
                w = m[i, c] if m[i, c].sum() > 0 else np.ones(m.shape[-1])
                order = np.argsort(f[i, c], kind="stable")
                cum = np.cumsum(w[order])
                levels = (np.arange(len(w)) + 0.5) / len(w) * cum[-1]
                idx = np.minimum(np.searchsorted(cum, levels, side="left"), len(w) - 1)
                protos[c] += f[i, c][order][idx] / 3
        # the model computes the cumulative weights in float32: a level that falls on a boundary may pick the
        # neighbouring value, so a few quantiles in a thousand may differ
        assert np.isclose(obj.q[n][0].double().numpy(), protos, rtol=1e-4, atol=1e-5).mean() > 0.99, n
    x = torch.randn(1, 3, 64, 64)
    sf = FeatureExtractor(resnet.module, layers)(x)
    expected = 0.0
    for n, w in zip(obj.layers, obj.weights, strict=True):
        s = np.sort(sf[n][0].double().numpy(), axis=-1)
        err = ((s - obj.q[n][0].double().numpy()) ** 2 * obj.importance[n][0].double().numpy()[:, None]).mean()
        plain = ((s - obj.q_plain[n][0].double().numpy()) ** 2).mean()
        expected += w * err + 0.5 * w * plain
    t = np.sort(sf["layer3.1"][0, 4].double().numpy())
    expected += 2.0 * ((t - obj.q_target[0, 0].double().numpy()) ** 2).mean()
    expected -= 1.0 * sf["layer3.1"][0, 4].double().mean().item()
    assert float(obj(Views.of(x))) == pytest.approx(expected, rel=1e-4)


def test_target_term_prototype_is_the_references_sorted_channel(resnet, refs):
    obj = _recipe(resnet, refs, relevance="none", target_weight=1.0)
    act = FeatureExtractor(resnet.module, ["layer3.1"])(refs.load(resnet.transform()))["layer3.1"][:, 4]
    assert torch.allclose(obj.q_target[0, 0], act.sort(-1).values.mean(0), atol=1e-6)


def test_neuron_errors(resnet, refs):
    with pytest.raises(VitalError, match="out of range.*256 channels"):
        vital.visualize(resnet, vital.Channel("layer3.1", 256), refs, steps=1, progress=False)
    with pytest.raises(VitalError, match="upstream of every matched layer"):
        vital.visualize(resnet, vital.Channel("conv1", 0), refs, steps=1, progress=False)
    with pytest.raises(VitalError, match="no layer 'layer9'"):
        vital.visualize(resnet, vital.Channel("layer9", 0), refs, steps=1, progress=False)
    with pytest.raises(VitalError, match="one layer"):
        vital.visualize(resnet, [vital.Channel("layer3", 0), vital.Channel("layer2", 0)], refs, progress=False)
    with pytest.raises(VitalError, match="unknown relevance 'lrp\\+'"):
        vital.visualize(resnet, vital.Channel("layer3", 0), refs, steps=1, relevance="lrp+", progress=False)
    with pytest.raises(VitalError, match="unknown mask 'soft'; use one of reference, multiply"):
        vital.visualize(resnet, vital.Channel("layer3", 0), refs, steps=1, mask="soft", progress=False)
    with pytest.raises(VitalError, match="target_weight must be at least 0"):
        vital.visualize(resnet, vital.Channel("layer3", 0), refs, steps=1, target_weight=-1, progress=False)
    with pytest.raises(VitalError, match=r"options \['mask', 'relevance'\] apply to channel targets"):
        vital.visualize(resnet, vital.Class(0), refs, steps=1, relevance="lrp", mask="multiply", progress=False)


def test_mined_store_feeds_a_neuron_run(tmp_path, resnet):
    rng = np.random.default_rng(1)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    store = vital.mine(resnet, ["layer3"], folder, k=3, out=tmp_path / "store", progress=False)
    store.check(resnet, "layer3", 7)
    refs = store.references("layer3", 7, kind="patches")
    res = vital.visualize(resnet, vital.Channel("layer3.1", 7), refs, steps=3, progress=False)
    assert len(res.record["references"][0]["files"]) == 3
    other = load_model(torchvision.models.resnet18(weights=None), size=64, name="another")
    with pytest.raises(VitalError, match="was mined for resnet18-small"):
        store.check(other, "layer3")
