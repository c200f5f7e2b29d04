"""The one optimisation loop every method runs: stages, Adam with warmup + cosine, jitter/flip/augmentation,
clipping (by the parameterization), a NaN guard, the transparency map and a progress bar.

A method supplies an objective (a `vital.objectives.Term`: per-sample loss of the images of a step, priors
included) and a `Parameterization`; the loop supplies everything else, so every method shares one schedule, one
seed discipline and one output format.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vital.errors import VitalError
from vital.objectives.base import Term, Views
from vital.params.base import Parameterization
from vital.run.transforms import Augment, jitter, random_flip


@dataclass(frozen=True)
class Stage:
    """`steps` iterations with the network seeing AvgPool2d(downsample) of the image."""

    steps: int
    downsample: int = 1


@dataclass
class LoopSettings:
    stages: list[Stage]
    lr: float = 1.0
    betas: tuple[float, float] = (0.5, 0.9)
    eps: float = 1e-8
    warmup: int = 100
    jitter: int = 30
    flip: bool = False
    seed: int = 0
    progress: bool = True

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("progress")
        return d


SETTING_DEFAULT_STEPS = {0: 2000, 1: 2000, 2: 20000}


def setting(setting_id: int, steps: int | None = None) -> dict:
    """Stages, Adam betas and clipping of the authors' settings 0-2 (arXiv 2503.22399, experiments section). `steps` overrides the length: for setting 0 it
    is the low-resolution stage, followed by half as many full-resolution steps (2000 + 1000 by default)."""
    if setting_id not in SETTING_DEFAULT_STEPS:
        raise VitalError(f"setting must be 0, 1 or 2, got {setting_id}")
    n = SETTING_DEFAULT_STEPS[setting_id] if steps is None else steps
    if n < 1:
        raise VitalError(f"steps must be at least 1, got {n}")
    if setting_id == 0:
        return {"stages": [Stage(n, 2), Stage(max(1, n // 2), 1)], "betas": (0.5, 0.9), "clip": True}
    if setting_id == 1:
        return {"stages": [Stage(n, 1)], "betas": (0.5, 0.9), "clip": True}
    return {"stages": [Stage(n, 1)], "betas": (0.9, 0.999), "clip": False}


def lr_at(t: int, total: int, lr: float, warmup: int) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to 0 over the rest of the stage."""
    if t < warmup:
        return lr * (t + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * (t - warmup) / span)) * lr


@dataclass
class Trace:
    """What the loop produces: final image in input space, transparency accumulator, per-step losses."""

    image: torch.Tensor  # (B, 3, H, W), model input space
    grad_accumulator: torch.Tensor  # (B, H, W): sum over steps of the channel-mean |dL/d image|
    history: torch.Tensor  # (steps, B)
    seconds: float
    step_times: list[float] = field(default_factory=list)  # wall time of each step, for medians and profiles

    @property
    def step_seconds(self) -> float:
        """Mean wall time of one step (without the stages' preparation)."""
        return sum(self.step_times) / max(1, len(self.step_times))


def optimize(param: Parameterization, objective: Term, settings: LoopSettings, *,
             augment: Augment | None = None, description: str = "vital") -> Trace:
    """Run every stage of `settings` on `param` against `objective`. Raises VitalError on a non-finite loss."""
    gen = torch.Generator(device="cpu").manual_seed(settings.seed + 1)  # the parameterization used `seed` for its init
    first = param.image().detach()
    acc = torch.zeros(first.shape[0], *first.shape[2:], device=first.device, dtype=first.dtype)
    history: list[torch.Tensor] = []
    bar = tqdm(total=settings.total_steps, desc=description, disable=not settings.progress, dynamic_ncols=True)
    start = time.perf_counter()
    step_times: list[float] = []
    try:
        for stage in settings.stages:
            objective.prepare(stage.downsample)
            params = param.parameters()
            opt = torch.optim.Adam(params, lr=settings.lr, betas=settings.betas, eps=settings.eps)
            shift = settings.jitter // stage.downsample
            t_step = time.perf_counter()
            for t in range(stage.steps):
                for group in opt.param_groups:
                    group["lr"] = lr_at(t, stage.steps, settings.lr, settings.warmup)
                image = param.image()
                x = F.avg_pool2d(image, stage.downsample) if stage.downsample > 1 else image
                x = jitter(x, shift, gen)
                if settings.flip:
                    x = random_flip(x, gen)
                loss = objective(Views(x, augment(x, gen)) if augment is not None else Views.of(x))
                if not torch.isfinite(loss).all():
                    raise VitalError(
                        f"the loss became {loss.detach().cpu().tolist()} at step {len(history)}; lower --lr, raise "
                        "the priors (--tv-l2, --l2) or check the references (stopped: no image was written)")
                # gradients of the image parameters (and of the rendered image, for the transparency map) only:
                # nothing accumulates in the model's parameters, and their weight gradients are never computed
                wrt = params if image.is_leaf else [*params, image]
                grads = torch.autograd.grad(loss.sum(), wrt)
                for p, g in zip(params, grads, strict=False):
                    p.grad = g
                image_grad = grads[-1] if not image.is_leaf else next(g for p, g in zip(params, grads, strict=False) if p is image)
                acc += image_grad.abs().mean(dim=1)
                opt.step()
                with torch.no_grad():
                    param.after_step()
                history.append(loss.detach())
                bar.update(1)
                if t % 10 == 0 or t == stage.steps - 1:
                    bar.set_postfix(loss=f"{loss.detach().mean().item():.4g}", res=x.shape[-1])
                now = time.perf_counter()
                step_times.append(now - t_step)
                t_step = now
    finally:
        bar.close()
    total = time.perf_counter() - start
    return Trace(param.image().detach(), acc, torch.stack(history).cpu(), total, step_times)
