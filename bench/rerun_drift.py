"""How far a rerun on another CPU can drift: the same class and neuron runs under each PyTorch kernel variant
(`ATEN_CPU_CAPABILITY` default / avx2 / avx512, where the CPU has it) and thread count, compared with the run on
this CPU's own kernels and 2 threads. The README's rerun guarantee quotes these figures.

Per variant and run: the largest pixel difference in levels, the share of values more than one level apart, the
mean absolute difference, and whether the target model still ranks the class first (class runs) or the unit's
activation changes (neuron runs). Each variant runs in a fresh process.
Usage: python bench/rerun_drift.py [--steps 300] [--size 224]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

import vital
from vital.features import FeatureExtractor
from vital.outputs.io import to_uint8
from vital.references.photos import photo_references

VARIANTS = [("avx512", 2), ("avx512", 1), ("avx2", 2), ("default", 2), ("default", 1)]
CLASSES = (282, 967)
CHANNEL = vital.Channel("_blocks.7", 16)


def runs(steps: int, size: int) -> dict[str, np.ndarray]:
    """In the child: a two-class batch and one channel of lite0, with the offline photos' views as references."""
    warnings.simplefilter("ignore")
    model = vital.load_model("efficientnet_lite0", size=size)
    refs = [photo_references(k, n=4, seed=0) for k in CLASSES]
    cls = vital.visualize(model, [vital.Class(k) for k in CLASSES], refs, steps=steps, progress=False)
    neuron = vital.visualize(model, CHANNEL, photo_references(282, n=4, seed=1), steps=steps, progress=False)
    images = {f"class{k}": to_uint8(im) for k, im in zip(CLASSES, cls.images, strict=True)}
    images["neuron"] = to_uint8(neuron.images[0])
    with torch.no_grad():
        logits = model.module(model.normalize(cls.images))
        feats = FeatureExtractor(model.module, [CHANNEL.layer])(model.normalize(neuron.images))[CHANNEL.layer]
    images["top1"] = logits.argmax(1).numpy()
    images["activation"] = feats[:, CHANNEL.channel].mean().reshape(1).numpy()
    return images


def compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> str:
    cells = []
    for k in (f"class{CLASSES[0]}", f"class{CLASSES[1]}", "neuron"):
        d = np.abs(a[k].astype(np.int16) - b[k].astype(np.int16))
        cells.append(f"{d.max():3d} {(d > 1).mean():7.2%} {d.mean():5.2f}")
    return " | ".join(cells) + f" | top1 {b['top1'].tolist()} act {float(b['activation'][0]):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--child", default=None)
    a = ap.parse_args()
    if a.child:
        np.savez(a.child, **runs(a.steps, a.size))
        return
    print(f"efficientnet_lite0, {a.steps} steps at {a.size} px; per image: max levels, share >1 level, mean |diff|")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cap, threads in VARIANTS:
            path = str(Path(tmp) / f"{cap}{threads}.npz")
            env = {**os.environ, "ATEN_CPU_CAPABILITY": cap, "OMP_NUM_THREADS": str(threads)}
            subprocess.run([sys.executable, __file__, "--steps", str(a.steps), "--size", str(a.size), "--child", path],
                           env=env, check=True)
            out[(cap, threads)] = dict(np.load(path))
            print(f"{cap}/{threads}: {compare(out[VARIANTS[0]], out[(cap, threads)])}", flush=True)


if __name__ == "__main__":
    main()
