"""Cases whose outputs are pinned within the rounding of any CPU (tests/pins.py): every relevance backend, the
activation objective's channel, position and direction readouts and short VITAL runs (chain, modified-gradient,
guided) in tests/fixtures/house_pins.npz; the reruns of old run records and a batch job in
tests/data/old_records/pixels.npz. Both files are written by tests/fixtures/make_house_pins.py."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn

import vital
from vital.models import load_model
from vital.outputs.io import to_uint8
from vital.references.images import from_images
from vital.relevance import RelevanceEngine


def _resnet():
    torch.manual_seed(0)
    return load_model(torchvision.models.resnet18(weights=None), size=48, name="resnet18-small")


def _refs():
    rng = np.random.default_rng(0)
    return from_images([Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)) for _ in range(2)])


class _NoChain(nn.Module):
    """Convolutions of every kind the z+ rule handles (strided, 1x1, depthwise with 'same' padding, dilated) between
    GELUs and a GroupNorm: no rule chain, so the modified-gradient rules run."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.GELU())
        self.b = nn.Sequential(nn.Conv2d(8, 12, 1), nn.GroupNorm(4, 12), nn.GELU())
        self.c = nn.Sequential(nn.Conv2d(12, 12, 3, groups=12, padding="same"), nn.GELU())
        self.d = nn.Sequential(nn.Conv2d(12, 6, 3, dilation=2, padding=2), nn.ReLU())

    def forward(self, x):
        return self.d(self.c(self.b(self.a(x))))


def _x(shape, seed=1):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def relevance_chain() -> dict[str, torch.Tensor]:
    m = _resnet().module
    x = _x((2, 3, 48, 48))
    out = {}
    for method in ("lrp", "lrp-restricted"):
        for k, v in RelevanceEngine(m, "layer3", ["layer2", "layer1", "conv1"], method)(x, torch.tensor([3, 9])).items():
            out[f"{method}/{k}"] = v
    return out


def relevance_guided() -> dict[str, torch.Tensor]:
    m = _resnet().module
    x = _x((2, 3, 48, 48))
    return RelevanceEngine(m, "layer3", ["layer2", "layer1.0.conv1"], "guided-backprop")(x, torch.tensor([3, 9]))


def relevance_modified_gradient() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    m = _NoChain().eval()
    x = _x((2, 3, 20, 20))
    out = {}
    for method in ("lrp", "lrp-restricted"):
        for k, v in RelevanceEngine(m, "d", ["c", "b", "a"], method)(x, torch.tensor([1, 4])).items():
            out[f"{method}/{k}"] = v
    return out


def relevance_inside_block() -> dict[str, torch.Tensor]:
    m = _resnet().module
    x = _x((2, 3, 48, 48))
    return RelevanceEngine(m, "layer3", ["layer1.0.conv2", "layer1"])(x, torch.tensor([3, 9]))


def activation_objectives() -> dict[str, torch.Tensor]:
    from vital.objectives.activation import Activation
    from vital.objectives.base import Views

    model = _resnet()
    x = _x((4, 3, 48, 48))
    out = {}
    cases = {
        "channel": [vital.Channel("layer2", 3), vital.Channel("layer3", 9)],
        "position": [vital.Channel("layer2", 3, (1, 2)), vital.Channel("layer2", 9)],
        "direction": [vital.Direction("layer2", [float(i % 5) - 2 for i in range(128)]),
                      vital.Direction("layer2", [float(i % 3) - 1 for i in range(128)])],
        "class": [vital.Class(3), vital.Class(7)],
    }
    for name, targets in cases.items():
        out[name] = Activation(model, targets)(Views(x[:2], x))
    return out


def vital_runs() -> dict[str, torch.Tensor]:
    """VITAL's alignment (activation=0: pinned before the activation term became the channel default; that term is
    checked against the activation objective in tests/test_sliced.py)."""
    model, refs = _resnet(), _refs()
    out = {}
    for relevance in ("lrp", "guided-backprop"):
        res = vital.visualize(model, [vital.Channel("layer2.1", 4), vital.Channel("layer2.1", 9)], refs, steps=3,
                              warmup=1, jitter=2, relevance=relevance, activation=0.0, progress=False)
        out[f"channel/{relevance}"] = res.images
    res = vital.visualize(model, vital.Channel("layer2.1", 4, (2, 3)), refs, steps=3, warmup=1, jitter=2,
                          mask="multiply", activation=0.0, progress=False)
    out["position/multiply"] = res.images
    res = vital.visualize(model, vital.Direction("layer2.1", [float(i % 7) - 3 for i in range(128)]), refs, steps=3,
                          warmup=1, jitter=2, activation=0.0, progress=False)
    out["direction"] = res.images
    res = vital.visualize(model, [vital.Channel("layer2.1", 4)], None, method="fourier", steps=3, progress=False)
    out["fourier"] = res.images
    torch.manual_seed(0)
    nochain = load_model(_NoChain().eval(), mean=(0.5,) * 3, std=(0.25,) * 3, size=32, name="nochain")
    res = vital.visualize(nochain, vital.Channel("d", 2), refs, steps=3, warmup=1, jitter=2, layers=["a", "b", "c"],
                          activation=0.0, progress=False)
    out["modified-gradient"] = res.images
    return out


CASES: dict[str, Callable[[], dict[str, torch.Tensor]]] = {
    "relevance_chain": relevance_chain,
    "relevance_guided": relevance_guided,
    "relevance_modified_gradient": relevance_modified_gradient,
    "relevance_inside_block": relevance_inside_block,
    "activation_objectives": activation_objectives,
    "vital_runs": vital_runs,
}


IMAGE_CASES = {"vital_runs"}  # outputs compared as saved pixels, not as float tensors
OLD_RECORDS = Path(__file__).parent / "data" / "old_records"


def rerun_record(name: str) -> dict[str, np.ndarray]:
    """The saved pixels of an old run record (tests/data/old_records/NAME) run again: efficientnet_lite0, two steps."""
    return {str(i): to_uint8(im) for i, im in enumerate(vital.rerun(OLD_RECORDS / name, progress=False).images)}


def batch_job() -> dict[str, np.ndarray]:
    """Five class targets of a batch job on a tiny seeded network, in batches of two (tests/conftest.py)."""
    from conftest import class_job, noise_folder, pixels

    from vital.jobs import run_job

    with tempfile.TemporaryDirectory() as tmp:
        refs = noise_folder(Path(tmp) / "refs", 6)
        run_job(class_job(refs, options={"param": "pixel"}), Path(tmp) / "out", progress=False)
        return pixels(Path(tmp) / "out")


# pinned by tests/test_record.py: saved pixels, (H, W, 3) uint8
RECORD_CASES: dict[str, Callable[[], dict[str, np.ndarray]]] = {
    "class": lambda: rerun_record("class"),
    "neuron": lambda: rerun_record("neuron"),
    "batch": batch_job,
}
