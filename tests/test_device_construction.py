"""GPU-correct by construction, proved on the CPU: with the model and inputs on the CPU and PyTorch's default device
set to "meta", every tensor that vital makes without naming a device becomes a meta tensor, and the first
operation that mixes it with the model's tensors raises. On a GPU the same tensor would sit on the CPU beside CUDA
inputs: the classic device mistake. Every run below must therefore finish, and its outputs must be real CPU
tensors. A second group runs a class and a neuron target on a float64 model with float64 images (no float32 hidden
on the way)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import TinyNet, noise_folder, tiny_sequential
from pinned_cases import _NoChain

import vital
from vital.models import load_model


def meta():
    """Tensors made without `device=` go to the meta device inside this block (models and inputs are made before)."""
    return torch.device("meta")


@pytest.fixture
def refs(tmp_path):
    return vital.references.from_folder(noise_folder(tmp_path / "refs", 6), n=6)


def _on_cpu(t: torch.Tensor) -> torch.Tensor:
    assert t.device.type == "cpu" and torch.isfinite(t).all()
    return t


def _nochain():
    torch.manual_seed(0)
    return load_model(_NoChain().eval(), mean=(0.5,) * 3, std=(0.25,) * 3, size=32, name="nochain")


def _quiet_run(model, targets, refs, on_meta: bool = True, **kw) -> vital.Result:
    with warnings.catch_warnings(), torch.device("meta" if on_meta else "cpu"):
        warnings.simplefilter("ignore")
        res = vital.visualize(model, targets, refs, steps=2, warmup=1, progress=False, **kw)
    _on_cpu(res.images), _on_cpu(res.grad_accumulator)
    return res


def test_class_run(refs):
    _quiet_run(tiny_sequential(), [vital.Class(1), vital.Class(4)], refs)


@pytest.mark.parametrize(("relevance", "model"), [("lrp", tiny_sequential), ("lrp", _nochain),
                                                  ("guided-backprop", tiny_sequential), ("none", tiny_sequential)],
                         ids=["rule-chain", "modified-gradient", "guided", "none"])
def test_neuron_run_on_each_relevance_backend(refs, relevance, model):
    vm = model()
    layer, others = ("4", ["0", "2"]) if vm.name == "tinyseq" else ("d", ["a", "b", "c"])
    _quiet_run(vm, vital.Channel(layer, 3), refs, relevance=relevance, layers=others)


def test_direction_and_position_targets(refs):
    vm = tiny_sequential()
    _quiet_run(vm, vital.Direction("4", [float(i % 3) - 1 for i in range(16)]), refs, layers=["0", "2"])
    _quiet_run(vm, vital.Channel("4", 2, (1, 1)), refs, layers=["0", "2"])


@pytest.mark.parametrize("method", ["maco", "fourier", "pixel", "deepinversion"])
def test_each_baseline(refs, method):
    vm = tiny_sequential() if method != "deepinversion" else _batchnorm_net()
    _quiet_run(vm, [vital.Class(2)], refs if method == "maco" else None, method=method)


def _batchnorm_net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    net[1].running_mean.uniform_(-0.5, 0.5)
    return load_model(net, mean=(0.5,) * 3, std=(0.25,) * 3, size=32, name="bn")


@pytest.fixture
def loader_seed_on_cpu(monkeypatch):
    """PyTorch's DataLoader draws its base seed with `torch.empty(())` on the default device when an iterator
    starts (its code, not vital's, and harmless without a default device): that one call runs with the CPU as the
    default, everything else in the mining pass stays under the meta default."""
    from torch.utils.data import dataloader

    start = dataloader._BaseDataLoaderIter.__init__

    def on_cpu(self, loader):
        with torch.device("cpu"):
            start(self, loader)

    monkeypatch.setattr(dataloader._BaseDataLoaderIter, "__init__", on_cpu)


def test_mining_with_effective_fields(tmp_path, loader_seed_on_cpu):
    folder, vm = noise_folder(tmp_path / "imgs", 5), tiny_sequential()
    with meta():
        store = vital.mine(vm, ["2", "4"], folder, k=2, patch="effective", progress=False)
    for layer in ("2", "4"):
        for t in store.tensors[layer].values():
            assert t.device.type == "cpu"
    assert len(store.references("4", 1, kind="patches").images) == 2


def test_circuit(refs):
    from vital.circuit import circuit

    vm = tiny_sequential()
    with meta():
        c = circuit(vm, "4", 3, refs, layers=["0", "2"], depth=2, top=2)
    shares = [s.share for sources in c.sources.values() for s in sources]
    assert len(c.layers) == 2 and len(shares) == 4 and np.isfinite(shares).all()


def test_metrics():
    from vital.metrics.classify import topk_accuracy
    from vital.metrics.embedding import penultimate_features, tsne
    from vital.metrics.kid import kid_from_features

    images, judge = torch.rand(4, 3, 32, 32), tiny_sequential()
    with meta():
        acc = topk_accuracy(judge, images, [1, 2, 3, 4])
        feats = penultimate_features(judge, images)
        emb = tsne(np.asarray(feats))
        score = kid_from_features(np.random.default_rng(0).normal(size=(6, 8)),
                                  np.random.default_rng(1).normal(size=(6, 8)), subsets=2, subset_size=3)
    assert len(acc["ranks"]) == 4 and 0 <= acc["top1"] <= acc["top5"] <= 1
    assert feats.shape[0] == 4 and np.isfinite(emb).all() and np.isfinite(score.mean)


@pytest.mark.integration
def test_judges_and_kid_on_the_real_networks():
    """The offline judge (efficientnet_lite1) and the FID Inception network behind KID, loaded first, then run under
    the meta default."""
    from vital.metrics.classify import load_judges, topk_accuracy
    from vital.metrics.fid import InceptionFeatures
    from vital.metrics.kid import kid_from_features

    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    (judge,) = load_judges(["efficientnet_lite1"])
    features = InceptionFeatures("cpu")
    features.net  # noqa: B018  (loaded before the meta block)
    with meta():
        acc = topk_accuracy(judge, images, [1, 2, 3])
        fa, fb = features(images), features(images.flip(3))
    assert len(acc["ranks"]) == 3 and fa.shape == (3, 2048) and np.isfinite(fa).all()
    assert np.isfinite(kid_from_features(fa, fb, subsets=2, subset_size=2).mean)


@pytest.mark.parametrize("target", ["class", "neuron"])
def test_float64_model_and_images(refs, target):
    torch.manual_seed(0)
    vm = load_model(TinyNet().double(), mean=(0.5,) * 3, std=(0.25,) * 3, size=32, name="tiny64")
    t = vital.Class(3) if target == "class" else vital.Channel("stage2", 5)
    res = _quiet_run(vm, t, refs, on_meta=False, **({} if target == "class" else {"layers": ["stem", "stage1"]}))
    assert res.images.dtype == torch.float64
