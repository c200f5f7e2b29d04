"""The GPU figures of issue 13 in one run, written as a markdown section (stdout, and appended to `--record`).

- ResNet-50 (random weights: time does not depend on them) class images, 2000 steps: seconds per image at batch 1
  and amortised over the batch sizes tried (the paper: about 40 s per image); preparation (reference encoding)
  included, extrapolated from the median step of a short run.
- A layer4 neuron (VITAL's channel defaults), 2000 steps: seconds per image (the paper: 2-3 min).
- Speed options on the class step (channels-last, bf16 autocast, torch.compile): step time and the deviation of
  logits and input gradients that `vital.run.speed.accelerate` measures and checks.
- Sort-matching of ResNet-50's five matched layers (batch 8, forward + backward): torch.sort on the device against
  the CPU path (numpy key sort on threads).
- Mining a synthetic JPEG folder: images/s with PIL decoding in DataLoader workers against decoding on the device
  (`mine(..., decode="device")`, torchvision.io.decode_jpeg).

Usage: python bench/gpu.py [--device cuda] [--record bench/RESULTS.md]; `--quick` (tiny sizes) checks the script
on a CPU before a GPU is lent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vital.methods import RunOptions, build_recipe
from vital.methods.vital import VitalOptions
from vital.models import load_model
from vital.objectives.sort_matching import Prototype, sort_matching_losses
from vital.references.mining import mine
from vital.references.photos import OFFLINE_PHOTOS, photo_references
from vital.run.loop import optimize
from vital.run.speed import SpeedOptions, accelerate, autocast
from vital.targets import Channel, Class

STEPS = 2000


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_seconds(model, targets, refs, steps: int, options: VitalOptions | None = None,
                speed: SpeedOptions | None = None) -> tuple[float, float]:
    """(preparation seconds, median step seconds after the first 3) of a short run."""
    recipe = build_recipe("vital", model, targets, refs, RunOptions(steps=steps, warmup=1, progress=False), options)
    with recipe, autocast(model, speed or SpeedOptions()):
        trace = optimize(recipe.param, recipe.objective, recipe.settings)
    sync(model.device)
    return trace.seconds - sum(trace.step_times), statistics.median(trace.step_times[3:])


def class_rows(model, refs, batches: list[int], steps: int) -> tuple[list[str], int]:
    rows, best = [], (float("inf"), 1)
    for b in batches:
        try:
            prep, step = run_seconds(model, [Class(k) for k, _ in refs[:b]], [r for _, r in refs[:b]], steps)
        except torch.OutOfMemoryError:
            rows.append(f"| {b} | out of memory | | |")
            break
        per_image = (prep + STEPS * step) / b
        best = min(best, (per_image, b))
        rows.append(f"| {b} | {1e3 * step:.1f} | {prep:.2f} | {per_image:.2f} |")
        if model.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows, best[1]


def speed_rows(model, refs, batch: int, steps: int, compile: bool = True) -> list[str]:
    """The class step with each speed option; `compile=False` leaves torch.compile out (minutes on a CPU)."""
    rows = []
    targets, sets = [Class(k) for k, _ in refs[:batch]], [r for _, r in refs[:batch]]
    _, base = run_seconds(model, targets, sets, steps)
    rows.append(f"| none | {1e3 * base:.1f} | 1.00 | - | - | - |")
    for label, opts in (("channels-last", SpeedOptions(channels_last=True)), ("bf16 autocast", SpeedOptions(autocast="bf16")),
                        *([("torch.compile", SpeedOptions(compile=True))] if compile else [])):
        try:
            with accelerate(model, opts, enforce=False) as acc:
                _, step = run_seconds(model, targets, sets, steps + (20 if opts.compile else 0), speed=opts)
            rep = acc.report
            within = max(rep["logits_deviation"], rep["gradient_deviation"]) <= opts.tolerance
            rows.append(f"| {label} | {1e3 * step:.1f} | {base / step:.2f} | {rep['logits_deviation']:.2g} "
                        f"| {rep['gradient_deviation']:.2g} | {opts.tolerance:g} ({'within' if within else 'above'}) |")
        except Exception as e:  # reported, not hidden: the row says why
            rows.append(f"| {label} | failed: {type(e).__name__}: {str(e).splitlines()[0][:80]} | | | | |")
    return rows


def sort_row(device: torch.device, batch: int, reps: int) -> str:
    """Sort-matching loss + gradient of ResNet-50's matched layer shapes at 224 px."""
    shapes = [(64, 112 * 112), (256, 56 * 56), (512, 28 * 28), (1024, 14 * 14), (2048, 7 * 7)]
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(batch, c, p, generator=g).relu() for c, p in shapes]
    protos = [torch.randn(c, p, generator=g).relu().sort(-1).values for c, p in shapes]

    def seconds(dev: torch.device) -> float:
        xs = [f.to(dev).requires_grad_(True) for f in feats]
        qs = [q.to(dev) for q in protos]
        times = []
        for _ in range(reps + 2):
            sync(dev)
            t = time.perf_counter()
            loss = sum(sort_matching_losses(x, [Prototype(q)]).sum() for x, q in zip(xs, qs, strict=True))
            torch.autograd.grad(loss, xs)
            sync(dev)
            times.append(time.perf_counter() - t)
        return statistics.median(times[2:])

    cpu, dev = seconds(torch.device("cpu")), seconds(device)
    n = batch * sum(c * p for c, p in shapes)
    return f"| {n / 1e6:.1f}M values (batch {batch}) | {1e3 * cpu:.1f} | {1e3 * dev:.1f} | {cpu / dev:.1f}x |"


def jpeg_folder(root: Path, n: int) -> None:
    """n photo-like JPEGs of 500 x 375 (smooth colour fields with noise), quality 90."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500] / 500
    for i in range(n):
        a = rng.uniform(2, 9, 3)
        img = np.stack([np.sin(a[0] * xx + i), np.cos(a[1] * yy - i), np.sin(a[2] * (xx + yy))], -1)
        img = 127 * (img + 1) + rng.normal(0, 12, img.shape)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / f"{i:05d}.jpg", quality=90)


def mining_rows(model, folder: Path, batch: int, workers: int) -> list[str]:
    rows = []
    n = len(list(folder.iterdir()))
    for decode, w in (("pil", 0), ("pil", workers), ("device", 0), ("device", min(workers, 4))):
        with tempfile.TemporaryDirectory() as out:
            mine(model, ["layer3"], folder, k=8, out=out + "/warm", batch_size=batch, progress=False,
                 workers=w, decode=decode)  # receptive fields cached, kernels warm
            sync(model.device)
            t = time.perf_counter()
            mine(model, ["layer3"], folder, k=8, out=out + "/s", batch_size=batch, progress=False, workers=w,
                 decode=decode)
            sync(model.device)
            rows.append(f"| {decode} | {w} | {n / (time.perf_counter() - t):.1f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--record", default=None, help="append the section to this markdown file")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs (CPU)")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    dev = torch.device(a.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    steps, batches = (6, [1, 2]) if a.quick else (40, [1, 8, 16, 32, 64, 128])
    n_jpegs, workers = (16, 2) if a.quick else (1024, min(8, os.cpu_count() or 1))
    model = load_model("resnet50", weights=None, device=dev)
    classes = list(OFFLINE_PHOTOS)
    refs = [(classes[i % len(classes)], photo_references(classes[i % len(classes)], n=8)) for i in range(max(batches))]
    lines = [f"## GPU path (bench/gpu.py): {name}", "",
             f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; ResNet-50 with random weights at 224 px; "
             f"{'QUICK CHECK, not a measurement; ' if a.quick else ''}per-image seconds extrapolate {STEPS} steps "
             "from the median step of a short run, preparation included.", "",
             "| batch | step (ms) | preparation (s) | seconds per 2000-step class image |", "|---|---|---|---|"]
    rows, best = class_rows(model, refs, batches, steps)
    lines += rows
    prep, step = run_seconds(model, [Channel("layer4", 0)], [refs[0][1]], steps)
    lines += ["", f"layer4 neuron (channel defaults), batch 1: step {1e3 * step:.1f} ms, preparation {prep:.2f} s, "
              f"{prep + STEPS * step:.1f} s per 2000-step image.", "",
              f"Speed options on the class step (batch {best}; deviations are relative L2 errors of logits and input "
              "gradients on a seeded batch, checked against each option's tolerance):", "",
              "| option | step (ms) | speed-up | logits deviation | gradient deviation | tolerance |",
              "|---|---|---|---|---|---|"]
    lines += speed_rows(model, refs, best, steps, compile=not a.quick)
    lines += ["", "Sort-matching loss and gradient, ResNet-50's matched layers:", "",
              "| values | CPU path (ms) | on the device (ms) | ratio |", "|---|---|---|---|",
              sort_row(dev, 2 if a.quick else 8, 3 if a.quick else 10)]
    with tempfile.TemporaryDirectory() as d:
        jpeg_folder(Path(d), n_jpegs)
        lines += ["", f"Mining `layer3` over {n_jpegs} synthetic 500x375 JPEGs (batch 64, k=8):", "",
                  "| decoding | loader workers | images/s |", "|---|---|---|"]
        lines += mining_rows(model, Path(d), 8 if a.quick else 64, workers)
    text = "\n".join(lines) + "\n"
    print(text)
    if a.record:
        with open(a.record, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
