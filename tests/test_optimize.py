import math

import pytest
import torch

from vital.errors import VitalError
from vital.objectives.base import Term, Views
from vital.params.pixel import PixelParam
from vital.run.loop import LoopSettings, Stage, lr_at, optimize, setting


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 1000, 1.0, 100) == pytest.approx(0.01)
    assert lr_at(99, 1000, 1.0, 100) == pytest.approx(1.0)
    assert lr_at(100, 1000, 1.0, 100) == pytest.approx(1.0)
    assert lr_at(550, 1000, 1.0, 100) == pytest.approx(0.5)
    assert lr_at(999, 1000, 1.0, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 899 / 900)))


def test_settings_table():
    s0, s1, s2 = setting(0), setting(1), setting(2)
    assert s0["stages"] == [Stage(2000, 2), Stage(1000, 1)] and s0["betas"] == (0.5, 0.9) and s0["clip"]
    assert s1["stages"] == [Stage(2000, 1)]
    assert s2["stages"] == [Stage(20000, 1)] and s2["betas"] == (0.9, 0.999) and not s2["clip"]
    with pytest.raises(VitalError):
        setting(3)


class Quadratic(Term):
    """Pulls every pixel toward `target`; records the resolutions it was prepared for."""

    def __init__(self, target: float = 0.5):
        self.target, self.prepared = target, []

    def prepare(self, downsample: int) -> None:
        self.prepared.append(downsample)

    def __call__(self, v: Views) -> torch.Tensor:
        return (v.image - self.target).square().flatten(1).mean(1)


def _param(seed=0, batch=1, size=16, clip=True):
    lo, hi = torch.full((1, 3, 1, 1), -1.0), torch.full((1, 3, 1, 1), 1.0)
    return PixelParam(batch, size, lo, hi, generator=torch.Generator().manual_seed(seed), clip=clip)


def _settings(**kw):
    base = dict(stages=[Stage(60)], lr=0.1, warmup=5, jitter=2, progress=False)
    base.update(kw)
    return LoopSettings(**base)


def test_loss_falls_and_clipping_holds():
    p = _param()
    trace = optimize(p, Quadratic(target=3.0), _settings())
    assert trace.history[-1].item() < 0.5 * trace.history[0].item()
    assert trace.image.max() <= 1.0 and trace.image.min() >= -1.0  # target 3 is outside: clipped to 1
    assert trace.grad_accumulator.shape == (1, 16, 16) and trace.grad_accumulator.min() > 0


def test_seed_reproducible():
    a = optimize(_param(1), Quadratic(), _settings(seed=1)).image
    b = optimize(_param(1), Quadratic(), _settings(seed=1)).image
    c = optimize(_param(2), Quadratic(), _settings(seed=2)).image
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_multi_resolution_stages_prepare_each_resolution():
    obj = Quadratic()
    trace = optimize(_param(), obj, _settings(stages=[Stage(5, 2), Stage(3, 1)]))
    assert obj.prepared == [2, 1] and trace.history.shape == (8, 1)


def test_nan_stops_with_a_message():
    class Bad(Quadratic):
        def __call__(self, x):
            return super().__call__(x) * float("nan")

    with pytest.raises(VitalError, match="loss became"):
        optimize(_param(), Bad(), _settings())


def test_batch_sample_equals_single_run():
    """Per-sample losses are summed, so sample 0 of a batch follows exactly the path of a run of its own."""
    single = optimize(_param(3, batch=1), Quadratic(), _settings(seed=3)).image
    batch = optimize(_param(3, batch=2), Quadratic(), _settings(seed=3)).image
    assert torch.allclose(batch[:1], single, atol=1e-6)
