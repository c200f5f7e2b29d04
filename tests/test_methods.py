"""Every method is a recipe over the one loop: each runs on class and channel targets and improves its objective."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import vital
from vital.errors import VitalError
from vital.references.images import from_images


@pytest.fixture
def refs():
    rng = np.random.default_rng(0)
    return from_images([Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(4)])


@pytest.mark.parametrize("method", ["pixel", "fourier", "maco", "deepinversion"])
def test_class_methods_raise_the_target_logit(tiny_model, refs, method):
    module = tiny_model.module
    if method == "deepinversion":
        module.stage1.insert(1, nn.BatchNorm2d(12).eval())
    res = vital.visualize(tiny_model, [vital.Class(2), vital.Class(5)], refs, method=method, steps=30,
                          progress=False, warmup=3)
    assert res.history[-5:].mean() < res.history[:5].mean()
    with torch.no_grad():
        logits = module(tiny_model.normalize(res.images))
    assert logits[0, 2] > logits[1, 2] and logits[1, 5] > logits[0, 5]
    assert res.record["method"] == method and res.images.min() >= 0 and res.images.max() <= 1


@pytest.mark.parametrize("method", ["pixel", "fourier", "maco"])
def test_channel_targets_on_two_layers(tiny_model, refs, method):
    targets = [vital.Channel("stage1", 3), vital.Channel("stage2", 7)]
    res = vital.visualize(tiny_model, targets, refs, method=method, steps=20, progress=False, warmup=2)
    assert res.history[-3:].mean() < res.history[:3].mean()
    assert res.history.shape == (20, 2)


def test_deepinversion_needs_batchnorm(tiny_model):
    with pytest.raises(VitalError, match="deepinversion needs BatchNorm layers"):
        vital.visualize(tiny_model, vital.Class(1), None, method="deepinversion", steps=1, progress=False)


def test_maco_needs_a_magnitude(tiny_model):
    with pytest.raises(VitalError, match="maco needs a magnitude spectrum"):
        vital.visualize(tiny_model, vital.Class(1), None, method="maco", steps=1, progress=False)


def test_maco_magnitude_from_file(tiny_model, refs, tmp_path):
    from vital.params.maco import maco_magnitude_from_images

    path = tmp_path / "mag.pt"
    torch.save(maco_magnitude_from_images(torch.rand(2, 3, 64, 64), 64), path)
    res = vital.visualize(tiny_model, vital.Class(1), None, method="maco", steps=3, progress=False,
                          extra={"maco_magnitude": str(path)})
    assert res.record["recipe"]["magnitude"] == str(path)


def test_direction_target_maximises_the_projection(tiny_model, refs):
    v = tuple(float(i % 3 == 0) for i in range(12))
    res = vital.visualize(tiny_model, vital.Direction("stage1", v), None, method="pixel", steps=20, progress=False,
                          warmup=2)
    assert res.history[-3:].mean() < res.history[:3].mean()
    with pytest.raises(VitalError, match="direction has 3 components"):
        vital.visualize(tiny_model, vital.Direction("stage1", (1.0, 0.0, 0.0)), None, method="pixel", steps=1,
                        progress=False)
    with pytest.raises(VitalError, match="visualise a direction with method"):
        vital.visualize(tiny_model, vital.Direction("stage1", v), refs, steps=1, progress=False)


def test_channel_objective_with_several_views_per_sample(tiny_model):
    """With augmentation crops (views) the batch is sample-major; each view is scored on its own sample's channel."""
    from vital.features import FeatureExtractor
    from vital.methods.baselines import ActivationObjective

    targets = [vital.Channel("stage1", 3), vital.Channel("stage2", 7), vital.Channel("stage1", 5)]
    obj = ActivationObjective(tiny_model, targets)
    x = torch.randn(6, 3, 32, 32)  # 3 targets x 2 views
    feats = FeatureExtractor(tiny_model.module, ["stage1", "stage2"])(x)
    expected = torch.stack([-feats[t.layer][2 * i + v, t.channel].mean() for i, t in enumerate(targets)
                            for v in range(2)]).view(3, 2).mean(1)
    assert torch.allclose(obj(x), expected)
