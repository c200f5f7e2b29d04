"""Shared fixtures: tiny random models (unit tests) and the real offline efficientnet_lite0 (integration)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vital.models import load_model


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
