"""Speed options leave results unchanged within their stated tolerances (on the CPU here; the same code on GPU)."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import noise_folder, tiny_sequential
from torch import nn

import vital
from vital.errors import VitalError
from vital.models import load_model
from vital.run import speed
from vital.run.speed import SpeedOptions

# torch.compile's C++ backend emits vectorised transposes even when ATEN_CPU_CAPABILITY=default asks it for scalar
# code, and then fails to build them (PyTorch 2.14's inductor; the emulation of another CPU in .ci/run and
# CONTRIBUTING.md): the compile cases run on every real capability and are skipped only under that emulation.
COMPILE = pytest.param(SpeedOptions(compile=True), id="compile", marks=pytest.mark.skipif(
    os.environ.get("ATEN_CPU_CAPABILITY") == "default",
    reason="inductor cannot build its kernels under ATEN_CPU_CAPABILITY=default (a PyTorch limitation)"))


def _tiny():
    return tiny_sequential()


def _refs(tmp_path):
    return vital.references.from_folder(noise_folder(tmp_path / "refs", 6), n=6)


def _run(opts: SpeedOptions, target, refs, **kw):
    """(result, speed report, (weights channels-last?, compiled?) during the run)."""
    model = _tiny()
    with speed.accelerate(model, opts) as acceleration, speed.autocast(model, opts):
        result = vital.visualize(model, target, refs, steps=6, seed=2, progress=False, **kw)
        converted = (model.module[0].weight.is_contiguous(memory_format=torch.channels_last),
                     model.module._compiled_call_impl is not None)
    return result, acceleration.report, converted


@pytest.mark.parametrize("opts", [pytest.param(SpeedOptions(channels_last=True), id="channels_last"), COMPILE,
                                  pytest.param(SpeedOptions(autocast="bf16"), id="bf16")])
def test_speed_option_keeps_the_result(tmp_path, opts):
    refs = _refs(tmp_path)
    targets = [vital.Class(1), vital.Class(4)]
    plain, _, _ = _run(SpeedOptions(), targets, refs)
    fast, report, converted = _run(opts, targets, refs)
    assert converted == (opts.channels_last, opts.compile)
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
    with speed.accelerate(load_model(nn.Sequential(_Offset(), conv), size=16),
                          SpeedOptions(channels_last=True)) as acceleration:
        assert acceleration.report["logits_deviation"] <= 1e-4


def _layout(model) -> dict[str, tuple]:
    """Every parameter's and buffer's dtype and strides, by name."""
    tensors = {**dict(model.module.named_parameters()), **dict(model.module.named_buffers())}
    return {name: (t.dtype, t.stride()) for name, t in tensors.items()}


def _assert_as_found(model, layout: dict, outputs: torch.Tensor, x: torch.Tensor) -> None:
    """No hook left on any module, every tensor in its old dtype and layout, not compiled, the same outputs."""
    for name, m in model.module.named_modules():
        assert not m._forward_pre_hooks and not m._forward_hooks, f"hook left on '{name}'"
        assert not m._backward_hooks and not m._forward_pre_hooks_with_kwargs, f"hook left on '{name}'"
    assert _layout(model) == layout
    assert model.module._compiled_call_impl is None
    with torch.no_grad():
        assert torch.equal(model.module(x), outputs)


class _Boom(Exception):
    pass


@pytest.mark.parametrize("opts", [pytest.param(SpeedOptions(channels_last=True), id="channels_last"), COMPILE,
                                  pytest.param(SpeedOptions(channels_last=True, compile=True, autocast="bf16"), id="all",
                                               marks=COMPILE.marks)])
def test_speed_options_are_undone_when_the_context_exits(tmp_path, opts):
    refs = _refs(tmp_path)
    model = _tiny()
    layout, x = _layout(model), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        outputs = model.module(x)
    with speed.accelerate(model, opts), speed.autocast(model, opts):
        vital.visualize(model, vital.Channel("4", 3), refs, steps=2, progress=False)  # LRP hooks too
        if opts.channels_last:
            assert model.module[0].weight.is_contiguous(memory_format=torch.channels_last)
            assert _layout(model) != layout and model.module._forward_pre_hooks
    _assert_as_found(model, layout, outputs, x)
    with pytest.raises(_Boom), speed.apply(model, opts):  # an error inside the context undoes it too
        assert (model.module._compiled_call_impl is not None) == opts.compile
        raise _Boom
    _assert_as_found(model, layout, outputs, x)
    acceleration = speed.apply(model, opts)  # or by hand
    acceleration.remove()
    acceleration.remove()  # twice is harmless
    _assert_as_found(model, layout, outputs, x)


def test_a_refused_option_leaves_the_model_as_it_was():
    """channels-last + bf16 on a network that bf16 breaks: refused, and the channels-last conversion is undone."""
    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]]).view(2, 3, 1, 1))
    model = load_model(nn.Sequential(_Offset(), conv, nn.AdaptiveAvgPool2d(1), nn.Flatten()), size=16)
    layout, x = _layout(model), torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        outputs = model.module(x)
    with speed.apply(model, SpeedOptions(channels_last=True)):
        assert _layout(model) != layout  # the conversion does change the weights' strides
    with pytest.raises(VitalError, match="above the tolerance"):
        speed.accelerate(model, SpeedOptions(channels_last=True, autocast="bf16"))
    _assert_as_found(model, layout, outputs, x)


def test_options_and_tolerances():
    assert SpeedOptions().tolerance == 0 and not SpeedOptions().any
    assert SpeedOptions(channels_last=True, autocast="bf16").tolerance == speed.TOLERANCE["bf16"]
    with pytest.raises(VitalError, match="use bf16 or fp16"):
        SpeedOptions(autocast="int8")
    with pytest.raises(VitalError, match="needs a GPU"):
        speed.autocast(_tiny(), SpeedOptions(autocast="fp16"))
