"""The neuron bench's faithfulness column (bench/path_judge.py) gives, neuron by neuron, what the library's
`path_similarity` gives on the same images, floor and held-out split."""

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

import vital
from vital.metrics.faithfulness import floor_images, path_similarity
from vital.models import load_model

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
from path_judge import PathJudge  # noqa: E402


def test_path_judge_matches_path_similarity():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 10, 3, stride=2, padding=1),
                        nn.ReLU(), nn.Conv2d(10, 6, 3, padding=1), nn.ReLU()).eval()
    model = load_model(net, size=16, name="three")
    g = torch.Generator().manual_seed(1)
    channels = [0, 3]
    held01 = [torch.rand(6, 3, 16, 16, generator=g) for _ in channels]
    pool = list(torch.rand(12, 3, 16, 16, generator=g))
    images = torch.rand(2, 3, 16, 16, generator=g)
    pj = PathJudge(model, "5", channels, held01, pool)
    got = pj.per_neuron(images)
    for i, c in enumerate(channels):
        target = vital.Channel("5", c)
        floor = floor_images(model, target, pool, 3)
        want = path_similarity(model, target, images[i:i + 1], held01[i], floor)
        assert want.layers == tuple(pj.layers)
        for key in ("visual", "floor", "ceiling"):
            assert np.allclose(got[key][i], getattr(want, key), atol=1e-12)
        shares = np.array([np.nan if s is None else s for s in want.share])
        assert np.allclose(got["share"][i], shares, atol=1e-12, equal_nan=True)
        assert (want.summary is None and np.isnan(got["summary"][i])) or np.isclose(got["summary"][i], want.summary)
