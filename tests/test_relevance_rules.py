"""LRP rules as data: a {layer type: rule} map or a preset name picks the rule chain's rule per weighted layer; the
epsilon rule agrees with an explicit computation, changes a neuron's relevance and its image, and is recorded
and rerun."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import noise_folder, tiny_sequential
from torch import nn

import vital
from vital.errors import VitalError
from vital.outputs.record import RunRecord
from vital.references.images import from_folder
from vital.relevance import RelevanceEngine
from vital.relevance.rule_maps import PRESETS, resolve_rules
from vital.relevance.zplus import EPS


def _epsilon(a: torch.Tensor, layer: nn.Module, r: torch.Tensor) -> torch.Tensor:
    """The epsilon rule by autograd: R_in = a * d/da sum(z * r / (z + eps sign z)), the ratio held constant."""
    a = a.detach().requires_grad_(True)
    z = layer(a)
    s = (r / (z + EPS * torch.where(z >= 0, 1.0, -1.0))).detach()
    (grad,) = torch.autograd.grad((z * s).sum(), a)
    return (a * grad).detach()


def _net() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4)).eval()


def test_the_epsilon_rule_of_a_conv_matches_an_explicit_computation():
    net, x, c = _net(), torch.randn(2, 3, 12, 12), torch.tensor([1, 3])
    rel = RelevanceEngine(net, "3", ["1"], "lrp", rules={"Conv2d": "epsilon"})(x, c)["1"]
    with torch.no_grad():
        a1 = net[1](net[0](x))
        a3 = net[3](net[2](a1))
    start = torch.zeros_like(a3)
    start[torch.arange(2), c] = a3[torch.arange(2), c].clamp(min=0)  # the lrp start: the channel's map
    expected = _epsilon(a1, net[2], start)  # the ReLU passes relevance unchanged
    torch.testing.assert_close(rel, expected, rtol=1e-4, atol=1e-6)
    default = RelevanceEngine(net, "3", ["1"], "lrp")(x, c)["1"]
    assert not torch.allclose(default, rel, rtol=1e-2, atol=1e-4)  # the map changed the neuron's relevance


def test_the_epsilon_rule_of_a_linear_layer_matches_an_explicit_computation():
    net, x, c = _net(), torch.randn(2, 3, 12, 12), torch.tensor([0, 2])
    rel = RelevanceEngine(net, "6", ["5"], "lrp", rules="epsilon-plus")(x, c)["5"]
    with torch.no_grad():
        a5 = net[:6](x)
        logits = net[6](a5)
    start = torch.zeros_like(logits)
    start[torch.arange(2), c] = logits[torch.arange(2), c].clamp(min=0)
    torch.testing.assert_close(rel, _epsilon(a5, net[6], start), rtol=1e-4, atol=1e-6)


def test_rule_maps_are_checked():
    assert resolve_rules(None) == PRESETS["zplus"] == resolve_rules({"Linear": "z+"})
    assert resolve_rules({"Conv2d": "epsilon"}) == {"Conv2d": "epsilon", "Linear": "z+"}
    for bad, pattern in [("zplsu", "unknown relevance rules preset 'zplsu'.*zplus"),
                         ({"GELU": "z+"}, "no rule can be chosen for layer type 'GELU'"),
                         ({"Conv2d": "alpha2beta1"}, "unknown rule 'alpha2beta1'"), (3, "a preset name")]:
        with pytest.raises(VitalError, match=pattern):
            resolve_rules(bad)


def test_a_rule_map_is_refused_where_the_chain_does_not_run(tiny_model):
    with pytest.raises(VitalError, match="apply to the LRP rule chain, which does not run here"):
        RelevanceEngine(tiny_model.module, "stage2", ["stage1"], "lrp", rules="epsilon")
    with pytest.raises(VitalError, match="not to guided backprop"):
        RelevanceEngine(_net(), "3", ["1"], "guided-backprop", rules="epsilon")


def test_a_run_records_its_rules_and_reruns_with_them(tmp_path):
    model, target = tiny_sequential(), vital.Channel("2", 5)
    refs = from_folder(noise_folder(tmp_path / "refs", 4), n=4)
    kw = dict(steps=3, progress=False)
    plain = vital.visualize(model, target, refs, **kw)
    custom = vital.visualize(model, target, refs, relevance_rules={"Conv2d": "epsilon"}, **kw)
    assert plain.run.recipe["relevance_rules"] == "zplus"
    assert custom.run.recipe["relevance_rules"] == {"Conv2d": "epsilon"}
    assert not torch.equal(plain.images, custom.images)  # the relevance weighs the alignment: the image moves
    args = RunRecord.from_json(json.loads(json.dumps(custom.record))).run_arguments()
    assert args["relevance_rules"] == {"Conv2d": "epsilon"}
    again = vital.visualize(model, target, from_folder(noise_folder(tmp_path / "refs", 4), n=4),
                            progress=False, **args)
    assert torch.equal(again.images, custom.images)
    with pytest.raises(VitalError, match="apply to channel targets"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vital.visualize(model, vital.Class(1), refs, relevance_rules="epsilon", **kw)
