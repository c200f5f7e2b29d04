"""Step time of VITAL class visualization against a bare forward+backward, and batched against sequential.

Prints, per model at its input size and batch 1: mean VITAL step time / mean bare forward+backward time of the
same model and batch (target on CPU: <= 1.3), and the throughput of one batch of 8 classes against 8 single runs
(target: > 1.5x on CPU). Measurements are interleaved and repeated; medians are reported.
Usage: python bench/step_time.py [--models efficientnet_lite0,resnet50] [--steps 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vital.methods import RunOptions, build_recipe
from vital.models import load_model
from vital.optimize import optimize
from vital.references.photos import OFFLINE_PHOTOS, photo_references
from vital.targets import Class


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_step(model, batch: int, reps: int) -> float:
    """Forward + backward of the whole model with respect to the input, the cost floor of any input optimisation."""
    x = torch.randn(batch, 3, model.size, model.size, device=model.device, requires_grad=True)
    times = []
    for _ in range(reps + 2):
        sync(model.device)
        t = time.perf_counter()
        model(x).sum().backward()
        sync(model.device)
        times.append(time.perf_counter() - t)
        x.grad = None
    return statistics.median(times[2:])


def vital_step(model, classes: list[int], refs: dict, steps: int) -> float:
    recipe = build_recipe("vital", model, [Class(k) for k in classes], [refs[k] for k in classes],
                          RunOptions(steps=steps + 3, warmup=1, progress=False))
    recipe.settings.progress = False
    return optimize(recipe.param, recipe.objective, recipe.settings).step_seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="efficientnet_lite0,resnet50")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    torch.manual_seed(0)
    classes = list(OFFLINE_PHOTOS)[:4] * 2  # 8 targets
    refs = {k: photo_references(k, n=8) for k in set(classes)}
    dev = torch.device(a.device)
    name_dev = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name_dev}; torch {torch.__version__}")
    print("| model | bare fwd+bwd (ms) | VITAL step (ms) | ratio | batch-8 step (ms) | batch-8 throughput vs 8 single |")
    print("|---|---|---|---|---|---|")
    for name in a.models.split(","):
        model = load_model(name, weights="default" if name.startswith("efficientnet_lite") else None, device=dev)
        bare, single, batch8 = [], [], []
        for _ in range(a.rounds):  # interleaved, so drifting machine load hits all three alike
            bare.append(bare_step(model, 1, a.steps))
            single.append(vital_step(model, classes[:1], refs, a.steps))
            batch8.append(vital_step(model, classes, refs, a.steps))
        b, s, b8 = (statistics.median(v) for v in (bare, single, batch8))
        print(f"| {name} ({model.weights_id}) | {1e3 * b:.1f} | {1e3 * s:.1f} | {s / b:.2f} | {1e3 * b8:.1f} "
              f"| {8 * s / b8:.2f}x |")


if __name__ == "__main__":
    main()
