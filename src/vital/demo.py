"""`vital demo`: the embedded default. VITAL on efficientnet_lite0 for classes whose real photos ship with
scikit-image, batched, at full resolution, with a judgement of the result by the model itself."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vital.io import ensure_writable
from vital.models import load_model
from vital.references.photos import photo_references
from vital.targets import Class
from vital.visualize import visualize

DEMO_CLASSES = (282, 967)  # tiger cat (chelsea.png), espresso (coffee.png)
DEMO_STEPS = 600


def run_demo(out: str | os.PathLike = "out/demo", steps: int | None = None, device: str = "cpu",
             progress: bool = True) -> Path:
    out_dir = ensure_writable(out)
    model = load_model("efficientnet_lite0", device=device)
    refs = [photo_references(k, n=32, seed=0) for k in DEMO_CLASSES]
    print(f"VITAL on {model.name} ({model.weights_id}) for classes "
          f"{', '.join(model.class_name(k) for k in DEMO_CLASSES)}; references: views of scikit-image photos")
    result = visualize(model, [Class(k) for k in DEMO_CLASSES], refs, steps=steps or DEMO_STEPS,
                       progress=progress)
    paths = result.save(out_dir)
    with torch.no_grad():
        probs = model(model.normalize(result.images.to(model.device))).softmax(-1).cpu()
    for i, k in enumerate(DEMO_CLASSES):
        top = probs[i].topk(5)
        rank = (probs[i] > probs[i, k]).sum().item() + 1
        names = ", ".join(f"{model.class_name(int(j))} {float(v):.2f}" for v, j in zip(top.values, top.indices, strict=True))
        print(f"{model.class_name(k)}: {paths['images'][i]}  (model's rank of the class: {rank}; top-5: {names})")
    print(f"contact sheet: {paths['sheet'][0]}")
    print(f"run record:    {paths['record'][0]}")
    return out_dir
