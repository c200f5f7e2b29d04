"""Step time of VITAL against a bare forward+backward, batched against sequential, and mining throughput.

Prints, per model at its input size and batch 1: the median VITAL class step / the median bare forward+backward
of the same model and batch (issue 13's target on CPU: <= 1.10), the throughput of one batch of 8 classes against
8 single runs, the intermediate-neuron step (VITAL's channel defaults: relevance-weighted references, no relevance
pass per step; target at the deepest preset stage; <= 1.8) / bare forward+backward, the same with the authors'
per-step LRP mask (mask "multiply": one relevance pass per step), a MACO step over a bare forward+backward of its
crops (<= 1.1), and mining throughput / bare forward throughput over the same images (>= 0.9), also on 4 photos
(fixed per-call costs) at a first call with an empty cache and again. A second table gives the neuron step of
other architectures (`--neuron-models`, random weights: vit_b_16 and convnext_tiny by default, whose relevance
comes from the modified-gradient rules).
Measurements are interleaved and repeated; medians are reported.
Usage: python bench/step_time.py [--models efficientnet_lite0,resnet50] [--neuron-models vit_b_16,convnext_tiny]
       [--steps 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from vital.methods import RunOptions, build_recipe
from vital.methods.vital import VitalOptions
from vital.models import load_model
from vital.references.mining import mine
from vital.references.photos import OFFLINE_PHOTOS, photo_references
from vital.run.loop import optimize
from vital.targets import Channel, Class


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


def _step(recipe) -> float:
    """Median wall time of the steps after the first two (allocation and warm-up)."""
    with recipe:
        return statistics.median(optimize(recipe.param, recipe.objective, recipe.settings).step_times[2:])


def vital_step(model, classes: list[int], refs: dict, steps: int) -> float:
    return _step(build_recipe("vital", model, [Class(k) for k in classes], [refs[k] for k in classes],
                              RunOptions(steps=steps + 3, warmup=1, progress=False)))


def neuron_step(model, layer: str, refs, steps: int, mask: str = "reference") -> float:
    """One channel at `layer` with VITAL's channel defaults; mask "multiply" adds the LRP pass of every step."""
    return _step(build_recipe("vital", model, [Channel(layer, 0)], [refs], RunOptions(steps=steps + 3, warmup=1,
                                                                                    progress=False),
                              VitalOptions(mask=mask)))


def maco_step(model, refs, steps: int) -> float:
    """One MACO step (its crops of the one image through the model, forward and backward)."""
    return _step(build_recipe("maco", model, [Class(282)], [refs], RunOptions(steps=steps + 3, warmup=1,
                                                                             progress=False)))


def small_folder_ratio(model, layer: str, folder: Path) -> tuple[float, float]:
    """Mining / bare forward over 4 photos (fixed per-call costs): the first call, with an empty cache (receptive
    and effective fields measured), and a second call on the same photos (both taken from the cache)."""
    import os

    from vital.references.images import list_images

    files = list_images(folder)[:4]
    saved = os.environ.get("VITAL_CACHE")
    with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as cache:
        os.environ["VITAL_CACHE"] = cache
        try:
            for i, p in enumerate(files):
                shutil.copy(p, Path(d) / f"{i}{p.suffix}")
            cold = _mining_ratio(model, layer, Path(d), 4)
            warm = _mining_ratio(model, layer, Path(d), 4)
        finally:
            os.environ.pop("VITAL_CACHE") if saved is None else os.environ.__setitem__("VITAL_CACHE", saved)
    return cold[0] / cold[1], warm[0] / warm[1]


def mining_ratio(model, layer: str, folder: Path, batch: int = 8) -> tuple[float, float]:
    """Images/s of `vital.mine` (one layer, every channel, top-50) and of bare no-grad forwards of the same
    preprocessed images (loading included in both, through the same loader)."""
    from vital.references.images import list_images, load_rgb

    files = []
    for p in list_images(folder):
        try:
            load_rgb(p)
            files.append(p)
        except OSError:
            continue  # not a photograph PIL can read: left out of both sides
    with tempfile.TemporaryDirectory() as d:
        for i, p in enumerate(files * 2):  # twice over, for a longer measurement
            shutil.copy(p, Path(d) / f"{i:03d}{p.suffix}")
        return _mining_ratio(model, layer, Path(d), batch)


def _mining_ratio(model, layer: str, folder: Path, batch: int) -> tuple[float, float]:
    from vital.references.images import list_images, load_rgb

    files = list_images(folder)
    tf = model.transform()
    t = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(files), batch):
            x = torch.stack([tf(load_rgb(p)) for p in files[i:i + batch]]).to(model.device)
            model(x)
    sync(model.device)
    bare = len(files) / (time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        mine(model, [layer], folder, k=50, out=d, batch_size=batch, progress=False)
        sync(model.device)
        mined = len(files) / (time.perf_counter() - t)
    return mined, bare


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="efficientnet_lite0,resnet50")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--neuron-models", default="vit_b_16,convnext_tiny")
    ap.add_argument("--images", default=None, help="folder to mine (default: the scikit-image photos)")
    a = ap.parse_args()
    if a.images is None:
        import skimage

        a.images = str(Path(skimage.__file__).parent / "data")
    torch.manual_seed(0)
    classes = list(OFFLINE_PHOTOS)[:4] * 2  # 8 targets
    refs = {k: photo_references(k, n=8) for k in set(classes)}
    dev = torch.device(a.device)
    name_dev = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name_dev}; torch {torch.__version__}")
    warnings.simplefilter("ignore")
    print("| model | bare fwd+bwd (ms) | class step (ms) | class/bare | batch-8 step (ms) | batch-8 vs 8 single "
          "| bare batch-8 vs 8 single (ceiling) | neuron target | neuron step (ms) | neuron/bare "
          "| neuron step, LRP each step (ms) | LRP-step/bare | MACO per crop / bare | mining img/s | bare fwd img/s "
          "| mining/bare | mining/bare, 4 photos, first call | same, again |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in filter(None, a.models.split(",")):
        model = load_model(name, weights="default" if name.startswith("efficientnet_lite") else None, device=dev)
        layers = model.preset.layers
        target = layers[-1]
        from vital.methods.baselines import MACO_CROPS

        bare, bare8, single, batch8, neuron, lrp, maco, barec = [], [], [], [], [], [], [], []
        for _ in range(a.rounds):  # interleaved, so drifting machine load hits all alike
            bare.append(bare_step(model, 1, a.steps))
            bare8.append(bare_step(model, 8, max(2, a.steps // 2)))
            single.append(vital_step(model, classes[:1], refs, a.steps))
            batch8.append(vital_step(model, classes, refs, a.steps))
            neuron.append(neuron_step(model, target, refs[classes[0]], a.steps))
            lrp.append(neuron_step(model, target, refs[classes[0]], a.steps, mask="multiply"))
            maco.append(maco_step(model, refs[classes[0]], a.steps))
            barec.append(bare_step(model, MACO_CROPS, max(2, a.steps // 2)))
        b, bb8, s, b8, n, nl, mc, bc = (statistics.median(v) for v in (bare, bare8, single, batch8, neuron, lrp,
                                                                       maco, barec))
        mined, fwd = mining_ratio(model, layers[-2], Path(a.images))
        cold, warm = small_folder_ratio(model, layers[-2], Path(a.images))
        print(f"| {name} ({model.weights_id}) | {1e3 * b:.1f} | {1e3 * s:.1f} | {s / b:.2f} | {1e3 * b8:.1f} "
              f"| {8 * s / b8:.2f}x | {8 * b / bb8:.2f}x | {target} | {1e3 * n:.1f} | {n / b:.2f} | {1e3 * nl:.1f} "
              f"| {nl / b:.2f} | {mc / bc:.2f} | {mined:.1f} | {fwd:.1f} | {mined / fwd:.2f} | {cold:.2f} | {warm:.2f} |")

    neuron_table(a, dev, refs[classes[0]])


def neuron_table(a, dev: torch.device, refs) -> None:
    """Neuron step / bare forward+backward for the architectures of `--neuron-models` (random weights)."""
    print("\n| model | bare fwd+bwd (ms) | neuron target | neuron step (ms) | neuron/bare "
          "| neuron step, LRP each step (ms) | LRP-step/bare | relevance rules |")
    print("|---|---|---|---|---|---|---|---|")
    for name in filter(None, a.neuron_models.split(",")):
        model = load_model(name, weights=None, device=dev)
        target = model.preset.layers[-1]
        bare, neuron, lrp = [], [], []
        for _ in range(a.rounds):
            bare.append(bare_step(model, 1, a.steps))
            neuron.append(neuron_step(model, target, refs, a.steps))
            lrp.append(neuron_step(model, target, refs, a.steps, mask="multiply"))
        from vital.relevance import RelevanceEngine

        rules = RelevanceEngine(model.module, target, [model.preset.layers[0]]).backend
        b, n, nl = (statistics.median(v) for v in (bare, neuron, lrp))
        print(f"| {name} (random) | {1e3 * b:.1f} | {target} | {1e3 * n:.1f} | {n / b:.2f} | {1e3 * nl:.1f} "
              f"| {nl / b:.2f} | {rules} |")


if __name__ == "__main__":
    main()
