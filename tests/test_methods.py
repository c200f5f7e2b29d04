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
    """The magnitude saved in the file, not the references' spectrum, is the one the run renders with."""
    from vital.methods import RunOptions, build_recipe, split_options
    from vital.params.maco import MacoParam, maco_magnitude_from_images, symmetrize_magnitude

    canvas = 2 * tiny_model.size
    images = torch.rand(2, 3, canvas, canvas, generator=torch.Generator().manual_seed(1))
    magnitude = maco_magnitude_from_images(images, canvas)
    path = tmp_path / "mag.pt"
    torch.save(magnitude, path)
    run, opts = split_options("maco", {"magnitude": str(path), "steps": 3})
    recipe = build_recipe("maco", tiny_model, [vital.Class(1)], [refs], RunOptions(**run), opts)
    assert torch.allclose(recipe.param.magnitude.double(), symmetrize_magnitude(magnitude), rtol=1e-6, atol=1e-7)
    spectrum = torch.fft.rfft2(recipe.param.raw().detach(), norm="ortho").abs()  # what is rendered has it
    assert torch.allclose(spectrum[0], recipe.param.magnitude, atol=1e-4)

    lo, hi = tiny_model.pixel_bounds()
    from_file = MacoParam(1, canvas, lo, hi, magnitude=magnitude, generator=torch.Generator()).state()
    res = vital.visualize(tiny_model, vital.Class(1), refs, method="maco", steps=3, progress=False,
                          magnitude=str(path))
    by_refs = vital.visualize(tiny_model, vital.Class(1), refs, method="maco", steps=3, progress=False)
    assert res.record["recipe"]["magnitude"] == str(path)
    assert res.record["parameterization"]["magnitude_sha256"] == from_file["magnitude_sha256"]
    assert by_refs.record["parameterization"]["magnitude_sha256"] != from_file["magnitude_sha256"]


def test_direction_target_maximises_the_projection(tiny_model, refs):
    v = tuple(float(i % 3 == 0) for i in range(12))
    res = vital.visualize(tiny_model, vital.Direction("stage1", v), None, method="pixel", steps=20, progress=False,
                          warmup=2)
    assert res.history[-3:].mean() < res.history[:3].mean()
    with pytest.raises(VitalError, match="direction has 3 components"):
        vital.visualize(tiny_model, vital.Direction("stage1", (1.0, 0.0, 0.0)), None, method="pixel", steps=1,
                        progress=False)
    # VITAL takes directions too: relevance starts from the readout (tests/test_units.py goes further)
    res = vital.visualize(tiny_model, vital.Direction("stage1", v), refs, steps=2, warmup=1, progress=False)
    assert torch.isfinite(res.history).all()


def test_channel_objective_with_several_views_per_sample(tiny_model):
    """With augmentation crops (views) the batch is sample-major; each view is scored on its own sample's channel."""
    from vital.features import FeatureExtractor
    from vital.objectives.activation import Activation
    from vital.objectives.base import Views

    targets = [vital.Channel("stage1", 3), vital.Channel("stage2", 7), vital.Channel("stage1", 5)]
    obj = Activation(tiny_model, targets)
    x = torch.randn(6, 3, 32, 32)  # 3 targets x 2 views
    feats = FeatureExtractor(tiny_model.module, ["stage1", "stage2"])(x)
    expected = torch.stack([-feats[t.layer][2 * i + v, t.channel].mean() for i, t in enumerate(targets)
                            for v in range(2)]).view(3, 2).mean(1)
    assert torch.allclose(obj(Views(torch.zeros(3, 3, 32, 32), x)), expected)


def _model_state(module: nn.Module) -> list:
    """Everything a run could leave behind on a model: hooks of every kind, training flags, parameter and buffer
    dtypes, strides, devices and gradient flags."""
    out = []
    for name, m in module.named_modules():
        out.append((name, m.training, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                    len(getattr(m, "_backward_pre_hooks", {}))))
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        out.append((name, t.dtype, t.stride(), t.device, t.requires_grad, t.grad is None))
    return out


@pytest.mark.parametrize("method", ["vital", "pixel", "fourier", "maco", "deepinversion"])
@pytest.mark.parametrize("fail", [False, True])
def test_a_run_leaves_the_model_as_it_found_it(tiny_model, refs, method, fail, monkeypatch):
    """After a run, and after a run that fails midway, no hook, flag, dtype or stride of the model has changed."""
    from vital.objectives.base import Views
    from vital.run import execute as vis

    tiny_model.module.stage1.insert(1, nn.BatchNorm2d(12).eval())  # DeepInversion needs BatchNorm
    before = _model_state(tiny_model.module)
    if fail:
        real = vis.optimize

        def failing(param, objective, settings, **kw):
            objective.prepare(1)
            objective(Views.of(param.image()))  # the hooks have run once
            raise RuntimeError("midway")

        monkeypatch.setattr(vis, "optimize", failing)
        assert real is not failing
        with pytest.raises(RuntimeError, match="midway"):
            vital.visualize(tiny_model, vital.Class(2), refs, method=method, steps=2, progress=False)
    else:
        vital.visualize(tiny_model, vital.Class(2), refs, method=method, steps=2, progress=False, warmup=1)
    assert _model_state(tiny_model.module) == before
    if method == "vital" and not fail:  # and channel targets, whose relevance weighting uses the model too
        targets = [vital.Channel("stage2.1", 1)]
        vital.visualize(tiny_model, targets, refs, steps=2, progress=False, relevance="guided-backprop",
                        mask="multiply")
        assert _model_state(tiny_model.module) == before


def test_couples_batch_is_a_property_of_the_method():
    from vital.methods import METHODS

    assert {name for name, m in METHODS.items() if m.couples_batch} == {"deepinversion"}
