"""Speed options leave results unchanged within their stated tolerances (on the CPU here; the same code on GPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vital
from vital import speed
from vital.errors import VitalError
from vital.models import load_model
from vital.speed import SpeedOptions


def _tiny():
    from test_batch import tiny_sequential

    return tiny_sequential()


def _refs(tmp_path):
    from test_batch import noise_folder

    return vital.references.from_folder(noise_folder(tmp_path / "refs", 6), n=6)


def _run(opts: SpeedOptions, target, refs, **kw):
    model = _tiny()
    report = speed.accelerate(model, opts)
    with speed.autocast(model, opts):
        result = vital.visualize(model, target, refs, steps=6, seed=2, progress=False, **kw)
    return result, report, model


@pytest.mark.parametrize("opts", [SpeedOptions(channels_last=True), SpeedOptions(compile=True),
                                  SpeedOptions(autocast="bf16")], ids=["channels_last", "compile", "bf16"])
def test_speed_option_keeps_the_result(tmp_path, opts):
    refs = _refs(tmp_path)
    targets = [vital.Class(1), vital.Class(4)]
    plain, _, _ = _run(SpeedOptions(), targets, refs)
    fast, report, model = _run(opts, targets, refs)
    assert model.module[0].weight.is_contiguous(memory_format=torch.channels_last) == opts.channels_last
    assert (model.module._compiled_call_impl is not None) == opts.compile
    tol = opts.tolerance
    assert report["logits_deviation"] <= tol and report["gradient_deviation"] <= tol
    # the images after 6 steps: within the option's tolerance of the plain run (as pixel values in [0, 1])
    assert (fast.images - plain.images).abs().max().item() <= tol
    rel = ((fast.history - plain.history).abs().max() / plain.history.abs().max()).item()
    assert rel <= tol


def test_channels_last_with_relevance_for_channels(tmp_path):
    refs = _refs(tmp_path)
    targets = [vital.Channel("4", 3), vital.Channel("4", 7)]
    plain, _, _ = _run(SpeedOptions(), targets, refs)
    fast, _, _ = _run(SpeedOptions(channels_last=True), targets, refs)
    assert (fast.images - plain.images).abs().max().item() <= speed.TOLERANCE["channels_last"]


class _Offset(nn.Module):
    def forward(self, x):
        return x + 1000.0


def test_an_option_that_changes_the_model_is_refused():
    """bf16 rounds x + 1000 to steps of 4, so a layer whose weights sum to zero loses its input: refused."""
    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]]).view(2, 3, 1, 1))
    model = load_model(nn.Sequential(_Offset(), conv, nn.AdaptiveAvgPool2d(1), nn.Flatten()), size=16)
    with pytest.raises(VitalError, match="above the tolerance 0.1"):
        speed.accelerate(model, SpeedOptions(autocast="bf16"))
    assert speed.accelerate(load_model(nn.Sequential(_Offset(), conv), size=16), SpeedOptions(channels_last=True))[
        "logits_deviation"] <= 1e-4


def test_options_and_tolerances():
    assert SpeedOptions().tolerance == 0 and not SpeedOptions().any
    assert SpeedOptions(channels_last=True, autocast="bf16").tolerance == speed.TOLERANCE["bf16"]
    with pytest.raises(VitalError, match="use bf16 or fp16"):
        SpeedOptions(autocast="int8")
    with pytest.raises(VitalError, match="needs a GPU"):
        speed.autocast(_tiny(), SpeedOptions(autocast="fp16"))
