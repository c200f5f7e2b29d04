"""Class step / bare forward+backward measured in pairs: every step of a VITAL run also times one bare
forward+backward of the same model just before it, so the two sides of each ratio run seconds apart and a shared,
noisy machine slows both alike (medians over the steps). A sharper companion of bench/step_time.py's class column.

Usage: python bench/paired_step.py [--models efficientnet_lite0,resnet50] [--steps 60]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from vital.methods import RunOptions, build_recipe
from vital.models import load_model
from vital.objectives.base import Term, Views
from vital.references.photos import OFFLINE_PHOTOS, photo_references
from vital.run.loop import optimize
from vital.targets import Class


class WithBarePass(Term):
    """The run's objective, preceded at every step by a timed bare forward+backward of the whole model."""

    name = "paired"

    def __init__(self, inner: Term, model):
        self.inner, self.model, self.bare = inner, model, []
        self.x = torch.randn(1, 3, model.size, model.size, device=model.device, requires_grad=True)

    def prepare(self, downsample: int) -> None:
        self.inner.prepare(downsample)

    def __call__(self, v: Views) -> torch.Tensor:
        t = time.perf_counter()
        torch.autograd.grad(self.model(self.x).sum(), self.x)
        self.bare.append(time.perf_counter() - t)
        return self.inner(v)

    def state(self) -> dict:
        return self.inner.state()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="efficientnet_lite0,resnet50")
    ap.add_argument("--steps", type=int, default=60)
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    k = list(OFFLINE_PHOTOS)[0]
    refs = photo_references(k, n=8)
    print(f"CPU ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print("| model | bare fwd+bwd (ms, median) | class step (ms, median) | class/bare (median of per-step ratios) "
          "| quartiles of the ratio |")
    print("|---|---|---|---|---|")
    for name in filter(None, a.models.split(",")):
        model = load_model(name, weights="default" if name.startswith("efficientnet_lite") else None)
        recipe = build_recipe("vital", model, [Class(k)], [refs], RunOptions(steps=a.steps + 5, warmup=1,
                                                                          progress=False))
        with recipe:
            paired = WithBarePass(recipe.objective, model)
            trace = optimize(recipe.param, paired, recipe.settings)
        bare = paired.bare[5:]
        step = [s - b for s, b in zip(trace.step_times[5:], bare, strict=True)]
        ratios = sorted(s / b for s, b in zip(step, bare, strict=True))
        q = statistics.quantiles(ratios, n=4)
        print(f"| {name} | {1e3 * statistics.median(bare):.1f} | {1e3 * statistics.median(step):.1f} "
              f"| {statistics.median(ratios):.3f} | {q[0]:.3f}-{q[2]:.3f} |")


if __name__ == "__main__":
    main()
