"""Sliced-Wasserstein alignment against an explicit sort of projected values, its gradient, its place in the VITAL
recipe; the activation term beside alignment; Lucid's scale-rotate transformation; the Fourier image for classes."""

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import vital
from vital.errors import VitalError
from vital.features import FeatureExtractor
from vital.methods import RunOptions, build_recipe
from vital.methods.vital import VitalOptions
from vital.models import load_model
from vital.objectives.activation import Activation
from vital.objectives.alignment import Alignment
from vital.objectives.base import Views
from vital.objectives.sliced import SlicedAlignment, random_directions, sliced_loss
from vital.params.fourier import FourierParam
from vital.references.images import from_images
from vital.relevance.readout import Readout
from vital.run.transforms import affine_scale_rotate, scale_rotate


@pytest.fixture
def resnet():
    torch.manual_seed(0)
    return load_model(torchvision.models.resnet18(weights=None), size=64, name="resnet18-small")


@pytest.fixture
def refs():
    rng = np.random.default_rng(0)
    return from_images([Image.fromarray(rng.integers(0, 255, (72, 72, 3), dtype=np.uint8)) for _ in range(3)])


def test_directions_are_unit_and_seeded():
    d = random_directions(7, 5, torch.Generator().manual_seed(3))
    assert d.shape == (7, 5) and torch.allclose(d.norm(dim=1), torch.ones(7), atol=1e-6)
    assert torch.equal(d, random_directions(7, 5, torch.Generator().manual_seed(3)))


def test_sliced_loss_equals_an_explicit_sort_of_projections():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(2, 4, 9)).astype(np.float32)  # (B, C, P)
    dirs = rng.normal(size=(3, 4))
    dirs = (dirs / np.linalg.norm(dirs, axis=1, keepdims=True)).astype(np.float32)
    q = np.sort(rng.normal(size=(2, 3, 9)), axis=-1).astype(np.float32)
    expected = np.zeros(2)
    for b in range(2):
        for k in range(3):
            proj = [sum(float(dirs[k, c]) * float(feats[b, c, p]) for c in range(4)) for p in range(9)]
            expected[b] += sum((a - float(t)) ** 2 for a, t in zip(sorted(proj), q[b, k], strict=True))
    expected /= 3 * 9
    got = sliced_loss(torch.from_numpy(feats), torch.from_numpy(dirs), torch.from_numpy(q))
    assert np.allclose(got.numpy(), expected, rtol=1e-5)


def test_sliced_loss_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    dirs = random_directions(5, 4, gen).double()
    q = torch.randn(2, 5, 6, generator=gen, dtype=torch.float64).sort(-1).values
    assert torch.autograd.gradcheck(lambda f: sliced_loss(f, dirs, q), (feats,), eps=1e-6, atol=1e-5)


def test_recipe_adds_sliced_term_on_the_alignments_features(resnet, refs):
    targets = [vital.Channel("layer3.1", 4), vital.Channel("layer3.1", 9)]
    rec = build_recipe("vital", resnet, targets, [refs, refs], RunOptions(steps=1, seed=5),
                       VitalOptions(sliced=2.0, projections=6, relevance="none"))
    obj = rec.objective.terms[1]
    assert isinstance(obj, SlicedAlignment) and rec.resolved["sliced"] == 2.0 and rec.resolved["projections"] == 6
    obj.prepare(1)
    x = torch.randn(2, 3, 64, 64)
    with rec:
        total = obj(Views.of(x))
    # independent: the reference projections by hand, the plain alignment term from its own class
    ref_x = obj.refs.pixels(0)
    ref_f = FeatureExtractor(resnet.module, obj.layers)(ref_x)
    syn_f = FeatureExtractor(resnet.module, obj.layers)(x)
    extra = torch.zeros(2)
    for n, w in zip(obj.layers, obj.weights, strict=True):
        d = obj.directions[n]
        assert d.shape == (6, ref_f[n].shape[1])
        proto = torch.einsum("kc,ncp->nkp", d, ref_f[n]).sort(-1).values.mean(0)
        extra += w * sliced_loss(syn_f[n], d, proto.expand(2, -1, -1))
    plain = build_recipe("vital", resnet, targets, [refs, refs], RunOptions(steps=1, seed=5),
                         VitalOptions(relevance="none")).objective.terms[1]
    plain.prepare(1)
    assert torch.allclose(total, plain(Views.of(x)) + 2.0 * extra, rtol=1e-4, atol=1e-5)


def test_activation_term_beside_alignment(resnet, refs):
    targets = [vital.Channel("layer3.1", 4)]
    rec = build_recipe("vital", resnet, targets, [refs], RunOptions(steps=1), VitalOptions(activation=3.0,
                                                                                              relevance="none"))
    state = rec.objective.state()["terms"]
    assert state[-1]["name"] == "alignment" and state[-1]["activation"] == 3.0 and rec.resolved["activation"] == 3.0
    base = build_recipe("vital", resnet, targets, [refs], RunOptions(steps=1), VitalOptions(relevance="none",
                                                                                               activation=0.0))
    x = torch.randn(1, 3, 64, 64)
    rec.objective.prepare(1)
    base.objective.prepare(1)
    with rec, base:
        diff = rec.objective(Views.of(x)) - base.objective(Views.of(x))
    act = FeatureExtractor(resnet.module, ["layer3.1"])(x)["layer3.1"][0, 4].mean()
    assert torch.allclose(diff, -3.0 * act, rtol=1e-4)


@pytest.mark.parametrize("target", [vital.Channel("layer3.1", 4), vital.Channel("layer3.1", 2, position=(1, 2)),
                                    vital.Direction("layer3.1", tuple(np.linspace(-1, 1, 256).tolist()))])
@pytest.mark.parametrize("relevance,mask", [("none", "reference"), ("lrp", "reference"), ("lrp", "multiply")])
def test_shared_activation_term_equals_the_activation_objective(resnet, refs, target, relevance, mask):
    """The activation term inside the alignment (one forward for both) gives the loss and the image gradient of the
    alignment plus the `Activation` objective, which runs a forward of its own; every unit kind, every relevance
    path."""
    if isinstance(target, vital.Direction) and relevance == "lrp" and mask == "multiply":
        pytest.skip("covered by the channel cases")
    kw = dict(channels=Readout.from_targets([target], "cpu"), target_layer="layer3.1",
              relevance=relevance, mask=mask, unweighted=1.0)
    shared = Alignment(resnet, ["layer1", "layer2"], [0.5, 1.0], [refs], activation=2.5, **kw)
    plain = Alignment(resnet, ["layer1", "layer2"], [0.5, 1.0], [refs], **kw)
    separate = plain + 2.5 * Activation(resnet, [target])
    calls = []
    handle = resnet.module.layer1.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    results = []
    for obj in (shared, separate):
        obj.prepare(1)
        xi = x.clone().requires_grad_(True)
        calls.clear()
        with obj:
            loss = obj(Views.of(xi))
        forwards = len(calls)
        (g,) = torch.autograd.grad(loss.sum(), xi)
        results.append((loss.detach(), g, forwards))
    handle.remove()
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-7)
    assert results[0][2] < results[1][2]  # the shared term runs the network once less per step


def test_activation_term_needs_a_unit(resnet, refs):
    with pytest.raises(VitalError, match="activation term need a target layer"):
        Alignment(resnet, ["layer1"], [1.0], [refs], activation=1.0)


def test_options_validated_and_defaults(resnet, refs):
    """The activation term is on for channels (weight 1, inside the alignment); sliced and augment are off."""
    for bad in ({"sliced": -1.0}, {"projections": 0}, {"augment": "spin"}, {"activation": -0.5}):
        with pytest.raises(VitalError):
            VitalOptions(**bad)
    rec = build_recipe("vital", resnet, [vital.Channel("layer3.1", 4)], [refs], RunOptions(steps=1), VitalOptions())
    assert (rec.resolved["activation"], rec.resolved["sliced"], rec.resolved["augment"]) == (1.0, 0.0, "none")
    assert rec.objective.terms[1].activation == 1.0
    assert rec.augment is None and type(rec.objective.terms[1]).__name__ == "Alignment"
    with pytest.raises(VitalError, match="apply to channel targets"):
        build_recipe("vital", resnet, [vital.Class(1)], [refs], RunOptions(steps=1), VitalOptions(sliced=1.0))


def test_scale_rotate_against_independent_transforms():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    assert torch.allclose(affine_scale_rotate(x, 1.0, 0.0), x, atol=1e-4)
    assert torch.allclose(affine_scale_rotate(x, 1.0, 90.0), torch.rot90(x, -1, (2, 3)), atol=1e-3)
    # scale 2: the central 4x4 block, enlarged (bilinear sampling at the half-pixel centres of that block)
    zoom = torch.nn.functional.interpolate(x[..., 2:6, 2:6], scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(affine_scale_rotate(x, 2.0, 0.0)[..., 1:7, 1:7], zoom[..., 1:7, 1:7], atol=1e-3)
    y = scale_rotate(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(y, x)
    assert torch.equal(y, scale_rotate(x, torch.Generator().manual_seed(0)))


def test_robust_recipe_runs(resnet, refs):
    res = vital.visualize(resnet, [vital.Channel("layer3.1", 4)], refs, steps=3, warmup=1, augment="scale-rotate",
                          sliced=1.0, projections=4, activation=0.5, progress=False)
    assert torch.isfinite(res.history).all() and res.record["recipe"]["augment"] == "scale-rotate"


def test_classes_take_the_fourier_image_by_default(resnet, refs):
    for opts in (VitalOptions(), VitalOptions(param="fourier")):
        rec = build_recipe("vital", resnet, [vital.Class(1)], [refs], RunOptions(steps=1), opts)
        assert isinstance(rec.param, FourierParam) and rec.resolved["param"] == "fourier"
        assert rec.settings.lr == 0.05
    pix = build_recipe("vital", resnet, [vital.Class(1)], [refs], RunOptions(steps=1), VitalOptions(param="pixel"))
    assert not isinstance(pix.param, FourierParam) and pix.resolved["param"] == "pixel" and pix.settings.lr == 1.0
