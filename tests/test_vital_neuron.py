"""VITAL for channels: masks and importance by hand, relevance as a constant weight, upstream-only matching,
errors, and a store mined by `vital.mine` used as references."""

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import vital
from vital.errors import VitalError
from vital.methods.vital_neuron import channel_importance, relevance_mask, upstream_of
from vital.models import load_model
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
    assert upstream_of(resnet, "layer4.1", cands) == ["conv1", "layer1", "layer2", "layer3"]
    assert upstream_of(resnet, "layer3.0", cands) == ["conv1", "layer1", "layer2"]
    assert upstream_of(resnet, "layer2", cands) == ["conv1", "layer1"]


@pytest.mark.parametrize("relevance", ["lrp", "lrp-restricted", "guided-backprop", "none"])
def test_neuron_run_lowers_its_loss(resnet, refs, relevance):
    res = vital.visualize(resnet, [vital.Channel("layer3.1", 4), vital.Channel("layer3.1", 9)], refs, steps=12,
                          warmup=2, jitter=2, relevance=relevance, progress=False)
    assert res.history.shape == (12, 2) and torch.isfinite(res.history).all()
    assert res.history[-3:].mean() < res.history[:3].mean()
    assert res.record["recipe"]["matched_layers"] == ["conv1", "layer1.1", "layer2.1"]
    assert res.record["objective"]["layer_weights"][0] == 0.1


def test_relevance_weights_are_constants(resnet, refs):
    """The gradient equals the one obtained with the relevance masks precomputed and frozen."""
    from vital.methods import RunOptions, build_recipe

    rec = build_recipe("vital", resnet, [vital.Channel("layer3.1", 4)], [refs], RunOptions(steps=1))
    obj = rec.objective
    obj.prepare(1)
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    obj(x).sum().backward()
    masks = obj._masks(x.detach(), obj.channels)
    x2 = x.detach().clone().requires_grad_(True)
    feats = obj.extractor(x2)
    from vital.objectives.sort_matching import sort_matching_loss

    manual = sum(w * sort_matching_loss(masks[n] * feats[n], obj.q[n], obj.importance[n])
                 for n, w in zip(obj.layers, obj.weights, strict=True))
    manual.sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-6)


def test_neuron_errors(resnet, refs):
    with pytest.raises(VitalError, match="out of range.*256 channels"):
        vital.visualize(resnet, vital.Channel("layer3.1", 256), refs, steps=1, progress=False)
    with pytest.raises(VitalError, match="upstream of every matched layer"):
        vital.visualize(resnet, vital.Channel("conv1", 0), refs, steps=1, progress=False)
    with pytest.raises(VitalError, match="no layer 'layer9'"):
        vital.visualize(resnet, vital.Channel("layer9", 0), refs, steps=1, progress=False)
    with pytest.raises(VitalError, match="one layer"):
        vital.visualize(resnet, [vital.Channel("layer3", 0), vital.Channel("layer2", 0)], refs, progress=False)
    with pytest.raises(VitalError, match="unknown relevance"):
        vital.visualize(resnet, vital.Channel("layer3", 0), refs, steps=1, relevance="lrp+", progress=False)


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
