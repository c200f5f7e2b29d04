"""Path similarity (vital.metrics.faithfulness): the rank correlation against scipy's, a fooling circuit whose
answer is known by construction (a unit reached through a channel natural images never use scores low, a natural
image at the ceiling), the same numbers in every feature layout, and bad input."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

import vital
from vital.errors import VitalError
from vital.metrics.faithfulness import (
    PathSimilarity,
    floor_images,
    path_layers,
    path_similarity,
    spearman,
    unit_response,
)
from vital.models import load_model

SIDE = 16


def test_spearman_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.relu(torch.randn(5, 12, generator=g, dtype=torch.float64))  # ReLU zeros: ties
    b = torch.relu(torch.randn(4, 12, generator=g, dtype=torch.float64)).round(decimals=1)
    got = spearman(a, b)
    for i in range(5):
        for j in range(4):
            assert float(got[i, j]) == pytest.approx(spearmanr(a[i], b[j]).statistic, abs=1e-12)
    assert float(spearman(torch.zeros(1, 12, dtype=torch.float64), b)[0, 0]) == 0.0  # a constant profile


def fooling_net() -> nn.Sequential:
    """mid ('1'): +R, +G, +B, -R, -G, -B and a pixel-checkerboard detector (channel 6) that smooth natural images
    leave at zero. unit ('3'): channel 0 = red + 10 x checkerboard; the others read single mid channels. Natural
    images reach unit 0 through red; a checkerboard reaches it through channel 6 (in the spirit of the fooling
    circuit of Geirhos et al. 2024)."""
    conv = nn.Conv2d(3, 7, 3, padding=1, bias=False)
    w = torch.zeros(7, 3, 3, 3)
    for c in range(3):
        w[c, c, 1, 1], w[c + 3, c, 1, 1] = 1.0, -1.0
    w[6] = torch.tensor([[1.0, -1, 1], [-1, 1, -1], [1, -1, 1]]) / 9
    conv.weight.data = w
    head = nn.Conv2d(7, 6, 1, bias=False)
    hw = torch.zeros(6, 7, 1, 1)
    hw[0, 0], hw[0, 6] = 1.0, 10.0
    for o, i in ((1, 1), (2, 2), (3, 6), (4, 3), (5, 5)):
        hw[o, i] = 1.0
    head.weight.data = hw
    return nn.Sequential(conv, nn.ReLU(), head, nn.ReLU()).eval()


def smooth(rgb: tuple[float, float, float], n: int, seed: int) -> torch.Tensor:
    """n smooth images around a colour (low-frequency noise): natural images of this toy world."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 0.3
    return (torch.tensor(rgb).view(1, 3, 1, 1) + nn.functional.interpolate(low, size=SIDE, mode="bilinear")
            - 0.15).clamp(0, 1)


@pytest.fixture(scope="module")
def world():
    model = load_model(fooling_net(), size=SIDE, name="fool", mean=(0.5,) * 3, std=(0.5,) * 3)
    target = vital.Channel("3", 0)
    refs = smooth((0.9, 0.3, 0.3), 8, 1)  # red: the unit's natural top images
    pool = torch.cat([smooth((0.3, 0.3, 0.9), 8, 2), smooth((0.3, 0.9, 0.3), 8, 3), smooth((0.5, 0.5, 0.5), 8, 4)])
    floor = floor_images(model, target, pool, 4)
    yy, xx = torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij")
    board = ((yy + xx) % 2).float() - 0.5
    fool = (torch.tensor([0.3, 0.3, 0.9]).view(3, 1, 1) + 0.4 * board).clamp(0, 1)[None]  # blue + checkerboard
    return model, target, refs, pool, floor, fool


def test_fooling_input_scores_low_and_a_natural_one_at_the_ceiling(world):
    model, target, refs, _, floor, fool = world
    assert float(unit_response(model, target, fool)[0]) > 5 * float(unit_response(model, target, refs).max())
    assert path_layers(model, target) == ["0", "3"]  # the matched layers upstream (the stem), then the unit's
    fooled = path_similarity(model, target, fool, refs, floor, layers=["1", "3"])
    assert fooled.summary is not None and fooled.summary < 0.3
    assert fooled.share[0] == pytest.approx(0.0, abs=0.05)  # at mid, the fooling image is an unrelated photo
    natural = path_similarity(model, target, smooth((0.85, 0.35, 0.3), 2, 9), refs, floor, layers=["1", "3"])
    assert natural.summary == pytest.approx(1.0, abs=0.05)
    held = path_similarity(model, target, refs[1::2], refs, floor, layers=["1", "3"])  # the held-out references themselves
    assert held.visual == pytest.approx(held.ceiling, abs=1e-12) and held.summary == pytest.approx(1.0, abs=1e-9)
    low = path_similarity(model, target, torch.stack(floor), refs, floor, layers=["1", "3"])
    assert low.summary == pytest.approx(0.0, abs=1e-9)


def test_floor_images_are_the_least_driving(world):
    model, target, _, pool, floor, _ = world
    response = unit_response(model, target, pool)
    want = response.sort().values[:4]
    assert unit_response(model, target, torch.stack(floor)).tolist() == pytest.approx(want.tolist())


def test_an_optimised_input_leaves_the_natural_path(world):
    """Gradient ascent on the unit from grey: it takes the cheap checkerboard route and scores below a natural
    image of the same unit."""
    model, target, refs, _, floor, _ = world
    x = torch.full((1, 3, SIDE, SIDE), 0.5) + 0.01 * torch.randn(1, 3, SIDE, SIDE,
                                                                  generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        (-model.module(model.normalize(x.clamp(0, 1)))[:, 0].mean()).backward()
        opt.step()
    image = x.detach().clamp(0, 1)
    assert float(unit_response(model, target, image)[0]) > float(unit_response(model, target, refs).max())
    score = path_similarity(model, target, image, refs, floor, layers=["1", "3"]).summary
    assert score is not None and score < 0.75


class ChannelsLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class Tokens(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("view", [ChannelsLast, Tokens])
def test_every_layout_gives_the_same_path(world, view):
    """The mid layer read channels-last or as tokens: the per-channel means, hence every number, are the same."""
    model, _, refs, _, floor, fool = world
    net = fooling_net()
    other = nn.Sequential(net[0], net[1], view(), nn.Identity())
    twin = load_model(other, size=SIDE, name="twin", mean=(0.5,) * 3, std=(0.5,) * 3)
    want = path_similarity(model, vital.Channel("1", 0), fool, refs, floor, layers=["1"])
    got = path_similarity(twin, vital.Channel("2", 0), fool, refs, floor, layers=["2"])
    for a, b in ((want.visual, got.visual), (want.floor, got.floor), (want.ceiling, got.ceiling)):
        assert a == pytest.approx(b, abs=1e-12)


def test_class_targets_follow_the_matched_layers_and_the_logit():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5)).eval()
    model = load_model(net, size=SIDE, name="tiny")
    assert path_layers(model, vital.Class(3)) == list(model.preset.layers)
    images = torch.rand(6, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = net(model.normalize(images))[:, 3]
    assert unit_response(model, vital.Class(3), images).tolist() == pytest.approx(logits.tolist(), abs=1e-5)
    result = path_similarity(model, vital.Class(3), images[:1], images[1:5], images[5:])
    again = PathSimilarity.from_dict(result.as_dict())
    assert again == result and len(result.share) == len(result.layers)


@pytest.mark.parametrize("call, message", [
    (lambda m, t, r, f, v: path_similarity(m, t, v, r[:1], f), "at least 2 references"),
    (lambda m, t, r, f, v: path_similarity(m, t, v, r, []), "do not drive the unit"),
    (lambda m, t, r, f, v: path_similarity(m, t, [], r, f), "at least one visualization"),
    (lambda m, t, r, f, v: path_similarity(m, t, v, r, f, layers=["nope"]), "has no layer 'nope'"),
    (lambda m, t, r, f, v: path_similarity(m, t, v, r, f, layers=[]), "no layers"),
    (lambda m, t, r, f, v: floor_images(m, t, r, 5), "at least twice as large"),
    (lambda m, t, r, f, v: unit_response(m, vital.Channel("3", 9), v), "channel 9 is out of range"),
    (lambda m, t, r, f, v: path_similarity(m, t, torch.full((1, 3, 4, 4), float("nan")), r, f), "NaN"),
])
def test_bad_input_is_one_clear_line(world, call, message):
    model, target, refs, _, floor, fool = world
    with pytest.raises(VitalError, match=message) as e:
        call(model, target, refs, floor, fool)
    assert "\n" not in str(e.value)


def test_path_plot_escapes_layer_names_and_draws_three_lines():
    from vital.pages.path_plot import path_svg

    evil = '<script>alert("x")</script>'
    plot = str(path_svg(PathSimilarity("t", ("a", evil), (0.1, 0.5), (0.0, 0.2), (0.4, 0.9), {"floor": 1})))
    assert "<script" not in plot and plot.count("<polyline") == 3 and plot.count("<circle") == 6
