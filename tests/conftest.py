"""Shared fixtures and helpers: tiny random models (unit tests), the real offline efficientnet_lite0 (integration),
noise image folders and the batch-job helpers used by several test modules (import them with `from conftest import
...`; a Ray worker or a subprocess imports the job factory as `conftest:tiny_sequential`)."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vital.models import load_model
from vital.models.zoo import VisionModel

# measured receptive fields are cached on disk: the tests keep theirs apart from the user's, fresh per session
os.environ["VITAL_CACHE"] = tempfile.mkdtemp(prefix="vital-cache-")

FACTORY = "conftest:tiny_sequential"
TESTS = str(Path(__file__).parent)


class TinyNet(nn.Module):
    """conv stem -> two stages -> pool -> linear: a small CNN with the layout of a classifier."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.stage1 = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(self.act(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return load_model(TinyNet(), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), size=32, name="tiny",
                      categories=[f"c{i}" for i in range(10)])


@pytest.fixture(scope="session")
def lite0():
    return load_model("efficientnet_lite0")


def tiny_sequential() -> VisionModel:
    """A seeded 3-conv classifier (an nn.Sequential, so LRP has rules for it): the same network in every process."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 10))
    return load_model(net, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), size=32, name="tinyseq",
                      categories=[f"c{i}" for i in range(10)])


def noise_folder(folder: Path, n: int, seed: int = 0, broken: bool = False) -> Path:
    """`n` seeded noise PNGs (40x48) that differ in brightness too; with `broken`, one unreadable file as well."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        shift = 60 * np.sin(i)  # images that differ in brightness as well as noise
        im = np.clip(rng.normal(128 + shift, 50, (40, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(im).save(folder / f"img{i:02d}.png")
    if broken:
        (folder / "img99_broken.jpg").write_bytes(b"not an image")
    return folder


def class_job(refs: Path, classes=range(5), **kw):
    """A batch job of class targets on `tiny_sequential`, 3 steps, batches of 2, references from the folder `refs`."""
    import vital
    from vital.jobs import Job, ModelSpec, References

    base = dict(model=ModelSpec(factory=FACTORY), targets=tuple(vital.Class(k) for k in classes), steps=3, seed=3,
                references=References("folder", str(refs), n=6), batch_size=2)
    return Job(**{**base, **kw})


def pixels(folder: Path) -> dict[str, np.ndarray]:
    """Every target's image in a job folder, by target folder name."""
    return {d.name: np.asarray(Image.open(d / f"{d.name}.png")) for d in sorted(folder.iterdir())
            if d.is_dir() and not d.name.startswith(".")}


def parse_batch_args(argv: list[str]) -> argparse.Namespace:
    """`vital batch` arguments as its parser reads them."""
    from vital.cli.batch import add as add_batch_parser

    p = argparse.ArgumentParser()
    add_batch_parser(p.add_subparsers())
    return p.parse_args(argv)
