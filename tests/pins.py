"""Pins that hold on every CPU: a restructuring must not change results, but float rounding may.

PyTorch picks vectorised kernels by CPU (`ATEN_CPU_CAPABILITY`: default, avx2, avx512) and splits reductions by
thread count, so the same correct program gives different last bits on another machine. A pin therefore stores a
small summary of each output and compares it with a tolerance derived from measurement, never bytes of floats:

- a tensor (relevance maps, activation readouts): a strided sample of at most `SAMPLE` values and the sums over
  every dimension but the channel (dim 1), each compared as max |got - pinned| / max |pinned|;
- an image (a run's output, in [0, 1]): its uint8 pixels (what `Result.save` writes), compared by the largest
  difference in levels and the share of values that differ by more than one level.

The tolerances come from tests/fixtures/pin_variance.py, which runs every pinned case under each kernel variant this
project's CPU supports (default, avx2, avx512) with 1 and 2 threads and prints the largest differences to the pins.
Measured on the project's 2-core Xeon (avx512), torch 2.14.1, 2026-12-08:
  tensors: largest relative difference 3.6e-6 (the class readout, default kernels); TENSOR_RTOL = 1e-4 (28x).
  images:  largest difference 5 levels, on 0.005% of values (a 224 px class image, two steps, default kernels; an
           Adam step whose gradient is near zero may flip sign); IMAGE_MAX_LEVELS = 25 (5x), IMAGE_SHARE = 0.1% (20x).
A wrong program is far outside these: tests/test_pinned_outputs.py shows a one-step-longer run, another relevance
rule and another seed failing them.
"""

from __future__ import annotations

import numpy as np
import torch

SAMPLE = 1024
TENSOR_RTOL = 1e-4
IMAGE_MAX_LEVELS = 25
IMAGE_SHARE = 1e-3


def to_levels(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8, as `vital.outputs.io.to_uint8` saves each image."""
    from vital.outputs.io import to_uint8

    return np.stack([to_uint8(im) for im in images.detach().cpu()])


def tensor_summary(t: torch.Tensor) -> dict[str, np.ndarray]:
    """A strided sample and the per-channel sums (float64): kilobytes that still move when any part changes."""
    flat = t.detach().cpu().double().flatten()
    stride = max(1, -(-flat.numel() // SAMPLE))
    parts = {"sample": flat[::stride].numpy(), "shape": np.array(t.shape)}
    if t.dim() >= 2:
        parts["channels"] = t.detach().cpu().double().transpose(0, 1).reshape(t.shape[1], -1).sum(1).numpy()
    return parts


def tensor_difference(got: dict[str, np.ndarray], pinned: dict[str, np.ndarray]) -> float:
    """The largest difference of the sample and the channel sums, relative to the pinned values' largest magnitude
    (infinite when the shapes differ)."""
    if got["shape"].tolist() != pinned["shape"].tolist():
        return float("inf")
    parts = [p for p in ("sample", "channels") if p in pinned]
    return max(float(np.abs(got[p] - pinned[p]).max()) / max(float(np.abs(pinned[p]).max()), 1e-30) for p in parts)


def tensor_mismatch(got: dict[str, np.ndarray], pinned: dict[str, np.ndarray], rtol: float = TENSOR_RTOL) -> str:
    """'' when `got` is within `rtol` of `pinned`, else why not."""
    err = tensor_difference(got, pinned)
    return "" if err <= rtol else f"relative difference {err:.2e} > {rtol:.0e} (shape {got['shape'].tolist()})"


def image_differences(got: np.ndarray, pinned: np.ndarray) -> tuple[int, float]:
    """The two statistics `image_mismatch` bounds: largest difference in levels, share over one level."""
    if got.shape != pinned.shape:
        return 255, 1.0
    diff = np.abs(got.astype(np.int16) - pinned.astype(np.int16))
    return int(diff.max()), float((diff > 1).mean())


def image_mismatch(got: np.ndarray, pinned: np.ndarray, max_levels: int = IMAGE_MAX_LEVELS,
                   share: float = IMAGE_SHARE) -> str:
    """'' when two uint8 images agree within the rounding of another CPU, else why not."""
    worst, over = image_differences(got, pinned)
    if worst > max_levels or over > share:
        return f"largest difference {worst} levels, {over:.3%} of values differ by more than one level"
    return ""


Parts = dict[str, np.ndarray]


def pin_parts(outputs: dict[str, torch.Tensor] | dict[str, np.ndarray], images: bool) -> dict[str, Parts]:
    """What a pin keeps of each output: its uint8 levels (images: a (B, 3, H, W) tensor in [0, 1], or the saved
    (H, W, 3) uint8 pixels) or its summary (tensors)."""
    def parts(v) -> Parts:
        if isinstance(v, np.ndarray):
            return {"levels": v}
        return {"levels": to_levels(v)} if images else tensor_summary(v)

    return {k: parts(v) for k, v in outputs.items()}


def mismatches(got: dict[str, Parts], pinned: dict[str, Parts]) -> list[str]:
    """One line for every output that is missing, extra, or outside its tolerance."""
    out = [f"{k}: not pinned" for k in sorted(set(got) - set(pinned))]
    out += [f"{k}: missing" for k in sorted(set(pinned) - set(got))]
    for k in sorted(set(got) & set(pinned)):
        why = (image_mismatch(got[k]["levels"], pinned[k]["levels"]) if "levels" in pinned[k]
               else tensor_mismatch(got[k], pinned[k]))
        out += [f"{k}: {why}"] if why else []
    return out


def save_pins(path, pins: dict[str, dict[str, Parts]]) -> None:
    """One compressed npz, keys 'case|output|part'."""
    np.savez_compressed(path, **{f"{c}|{k}|{p}": a for c, outs in pins.items() for k, parts in outs.items()
                                 for p, a in parts.items()})


def load_pins(path) -> dict[str, dict[str, Parts]]:
    pins: dict[str, dict[str, Parts]] = {}
    with np.load(path) as data:
        for name in data.files:
            case, key, part = name.split("|")
            pins.setdefault(case, {}).setdefault(key, {})[part] = data[name]
    return pins
