"""`vital demo`: the embedded default, on efficientnet_lite0 with photographs that ship with scikit-image.

1. Class neurons: VITAL for classes whose real photos exist offline, batched, judged by the model itself.
2. An intermediate neuron: references mined over the photos (`vital.mine`), the channel of a middle block whose
   top references respond most, visualised with LRP-weighted alignment; its activation on the visualization is
   compared with the median over its references.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from vital.features import FeatureExtractor
from vital.io import ensure_writable
from vital.models import load_model
from vital.references.mining import mine
from vital.references.photos import photo_path, photo_references
from vital.targets import Channel, Class
from vital.visualize import visualize

DEMO_CLASSES = (282, 967)  # tiger cat (chelsea.png), espresso (coffee.png)
DEMO_STEPS = 1000
NEURON_LAYER = "_blocks.10"
NEURON_REFS = 8


def _class_part(model, out: Path, steps: int, progress: bool) -> None:
    refs = [photo_references(k, n=32, seed=0) for k in DEMO_CLASSES]
    print(f"[1/2] VITAL on {model.name} ({model.weights_id}) for classes "
          f"{', '.join(model.class_name(k) for k in DEMO_CLASSES)}; references: views of scikit-image photos")
    result = visualize(model, [Class(k) for k in DEMO_CLASSES], refs, steps=steps, progress=progress)
    paths = result.save(out)
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
    photos = Path(photo_path("chelsea.png")).parent
    print(f"[2/2] mining {NEURON_LAYER} over the scikit-image photos, then VITAL with LRP for its most "
          "responsive channel")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few of scikit-image's files are not photographs PIL can read
        store = mine(model, [NEURON_LAYER], photos, k=NEURON_REFS, out=out / "store", progress=progress,
                     grid=True)
    scores = store.tensors[NEURON_LAYER]["image_scores"][:, :NEURON_REFS]
    channel = int(scores.median(dim=1).values.argmax())
    refs = store.references(NEURON_LAYER, channel, kind="images", n=NEURON_REFS)
    result = visualize(model, Channel(NEURON_LAYER, channel), refs, steps=steps, progress=progress)
    paths = result.save(out / "neuron")
    fx = FeatureExtractor(model.module, [NEURON_LAYER])
    with torch.no_grad():
        act = fx(model.normalize(result.images.to(model.device)))[NEURON_LAYER][0, channel].amax().item()
        ref_act = fx(refs.load(model.transform()).to(model.device))[NEURON_LAYER][:, channel].amax(-1)
    print(f"  {NEURON_LAYER}:{channel}: {paths['images'][0]}  (activation {act:.2f}; median over its "
          f"{len(ref_act)} references {ref_act.median().item():.2f})")
    print(f"  transparency: {paths['transparency'][0]}; sheet: {paths['sheet'][0]}")


def run_demo(out: str | os.PathLike = "out/demo", steps: int | None = None, device: str = "cpu",
             progress: bool = True) -> Path:
    out_dir = ensure_writable(out)
    model = load_model("efficientnet_lite0", device=device)
    _class_part(model, out_dir, steps or DEMO_STEPS, progress)
    _neuron_part(model, out_dir, steps or DEMO_STEPS, progress)
    print(f"run records: {out_dir / 'record.json'}, {out_dir / 'neuron' / 'record.json'}")
    return out_dir
