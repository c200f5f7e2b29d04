"""`vital demo`: the embedded default, on efficientnet_lite0 with photographs that ship with scikit-image.

1. Class neurons: VITAL for classes whose real photos exist offline, batched, judged by the model itself.
2. An intermediate neuron: references mined (`vital.mine`) over seeded crops of every offline photo, the channel
   of a middle block whose top patches are many and alike, visualised with VITAL's channel defaults; its
   activation and high-frequency power are compared with its reference patches'.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

from vital import validate
from vital.metrics.neuron import activation_ratio, naturalness_ratio
from vital.models import load_model
from vital.outputs.claim import ensure_writable
from vital.outputs.record import RECORD
from vital.references.mining import mine
from vital.references.photos import corpus_source, photo_corpus, photo_references
from vital.run.execute import visualize
from vital.targets import Channel, Class

DEMO_CLASSES = (282, 967)  # tiger cat (chelsea.png), espresso (coffee.png)
DEMO_STEPS = 1000
NEURON_LAYER = "_blocks.7"
NEURON_REFS = 12


def _class_part(model, out: Path, steps: int, progress: bool) -> None:
    refs = [photo_references(k, n=32, seed=0) for k in DEMO_CLASSES]
    print(f"[1/2] VITAL on {model.name} ({model.weights_id}) for classes "
          f"{', '.join(model.class_name(k) for k in DEMO_CLASSES)}; references: views of scikit-image photos")
    result = visualize(model, [Class(k) for k in DEMO_CLASSES], refs, steps=steps, progress=progress)
    paths = result.save(out / "class", overwrite=True)  # the demo's own folder: a second demo replaces the first
    with torch.no_grad():
        probs = model(model.normalize(result.images.to(model.device))).softmax(-1).cpu()
    for i, k in enumerate(DEMO_CLASSES):
        top = probs[i].topk(5)
        rank = (probs[i] > probs[i, k]).sum().item() + 1
        names = ", ".join(f"{model.class_name(int(j))} {float(v):.2f}"
                          for v, j in zip(top.values, top.indices, strict=True))
        print(f"  {model.class_name(k)}: {paths['images'][i]}  (model's rank of the class: {rank}; top-5: {names})")
    print(f"  contact sheet: {paths['sheet'][0]}")


def _neuron_part(model, out: Path, steps: int, progress: bool) -> None:
    print(f"[2/2] mining {NEURON_LAYER} over seeded crops of the offline photos, then VITAL for a channel whose "
          "top patches are many and alike")
    corpus = photo_corpus(out / "corpus", size=model.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = mine(model, [NEURON_LAYER], corpus, k=NEURON_REFS, out=out / "store", progress=progress, grid=True)
    channel, strength = store.distinct_channels(NEURON_LAYER, 1, group=corpus_source)[0]
    refs = store.references(NEURON_LAYER, channel, kind="patches", n=NEURON_REFS)
    result = visualize(model, Channel(NEURON_LAYER, channel), refs, steps=steps, progress=progress)
    paths = result.save(out / "neuron", overwrite=True)
    size = (model.size, model.size)
    ref01 = refs.load(lambda im: to_tensor(im.convert("RGB").resize(size, Image.Resampling.BICUBIC)))
    act = activation_ratio(model, NEURON_LAYER, channel, result.images, ref01)
    natural = naturalness_ratio(result.images, ref01)
    print(f"  {NEURON_LAYER}:{channel} (k-th/1st top score {strength:.2f}): {paths['images'][0]}")
    print(f"  its activation is {act:.2f}x the median of its {len(ref01)} reference patches'; high-frequency "
          f"power {natural:.2f}x theirs (pixel noise: about 20x)")
    print(f"  transparency: {paths['transparency'][0]}; sheet: {paths['sheet'][0]}; patches: "
          f"{out / 'store' / f'grid_{NEURON_LAYER}.png'}")


def run_demo(out: str | os.PathLike = "out/demo", steps: int | None = None, device: str = "cpu",
             progress: bool = True) -> Path:
    validate.integer("steps", steps, low=1)
    out_dir = ensure_writable(out)
    model = load_model("efficientnet_lite0", device=device)
    steps = DEMO_STEPS if steps is None else steps
    _class_part(model, out_dir, steps, progress)
    _neuron_part(model, out_dir, steps, progress)
    print(f"run records: {out_dir / 'class' / RECORD}, {out_dir / 'neuron' / RECORD}")
    return out_dir
