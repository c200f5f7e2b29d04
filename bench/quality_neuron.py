"""Quality of VITAL intermediate-neuron visualizations on efficientnet_lite0, references mined offline.

Mines the scikit-image photos at two depths, picks the channels whose top references respond most, visualises
each with LRP relevance weighting and without (relevance "none", the ablation), and prints the target channel's
spatial-max activation on the visualization against the median over its top-k references (expected: at least that
median). Writes a sheet per depth: visualization (LRP), its transparency map, the ablation, then the references.
Usage: python bench/quality_neuron.py [--steps 2000] [--out bench/out/quality_neuron]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import skimage
import torch
from PIL import Image

import vital
from vital.features import FeatureExtractor
from vital.io import contact_sheet
from vital.references.images import load_rgb


def spatial_max(model, layer: str, images: torch.Tensor, channel: int) -> torch.Tensor:
    with torch.no_grad():
        act = FeatureExtractor(model.module, [layer])(images.to(model.device))[layer]
    return act[:, channel].amax(dim=-1).cpu()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--layers", default="_blocks.4,_blocks.10")
    ap.add_argument("--channels", type=int, default=2, help="channels per layer")
    ap.add_argument("-k", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="bench/out/quality_neuron")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    out = Path(a.out)
    model = vital.load_model("efficientnet_lite0", device=a.device)
    layers = a.layers.split(",")
    photos = Path(skimage.__file__).parent / "data"
    store = vital.mine(model, layers, photos, k=a.k, out=out / "store", progress=False)
    print(f"efficientnet_lite0, {a.steps} steps at 224px, top-{a.k} mined images of {photos} as references")
    print("| layer:channel | relevance | activation on visualization | median of top-k refs | ratio |")
    print("|---|---|---|---|---|")
    for layer in layers:
        scores = store.tensors[layer]["image_scores"][:, : a.k]
        channels = scores.median(dim=1).values.argsort(descending=True)[: a.channels].tolist()
        refs = [store.references(layer, c, kind="images", n=a.k) for c in channels]
        targets = [vital.Channel(layer, c) for c in channels]
        runs = {rel: vital.visualize(model, targets, refs, steps=a.steps, relevance=rel, progress=False)
                for rel in ("lrp", "none")}
        rows = []
        for i, c in enumerate(channels):
            ref_pixels = refs[i].load(model.transform())
            median = spatial_max(model, layer, ref_pixels, c).median().item()
            for rel, res in runs.items():
                act = spatial_max(model, layer, model.normalize(res.images[i : i + 1]), c).item()
                print(f"| {layer}:{c} | {rel} | {act:.2f} | {median:.2f} | {act / median:.2f} |")
            lrp = runs["lrp"]
            vis = Image.fromarray((lrp.images[i].permute(1, 2, 0).numpy() * 255).astype("uint8"))
            ablation = Image.fromarray((runs["none"].images[i].permute(1, 2, 0).numpy() * 255).astype("uint8"))
            ref_imgs = [load_rgb(p) for p in refs[i].files[:5]]
            rows.append((f"{layer}:{c}  (LRP | transparency | no relevance | top references)", vis,
                         Image.fromarray(lrp.transparency(i), "RGBA"), [ablation, *ref_imgs]))
        sheet = contact_sheet(rows, out / f"sheet_{layer.replace('.', '_')}.png", thumb=160, max_refs=6)
        print(f"sheet: {sheet}")
        for rel, res in runs.items():
            res.save(out / f"{layer.replace('.', '_')}_{rel}", sheet=False)


if __name__ == "__main__":
    main()
