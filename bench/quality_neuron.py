"""Quality of intermediate-neuron visualizations on efficientnet_lite0, judged by numbers a noise image fails.

Corpus: seeded square crops at several scales of every photograph that installed packages ship
(`vital.references.photos.photo_corpus`), mined once (`vital.mine`) at a mid-level and a deep block. Neurons: per
layer, the channels whose top-k patches respond most evenly (k-th score over the first), taken greedily so that the
source photos of their top-k overlap little (Jaccard <= 0.25); the rule is printed with the table. Methods run side
by side with the same steps and seed; every method of a layer is one batch of its neurons.

Metrics, per method and layer:
- activation: the target channel's spatial max on the visualization over the median of it on its references
  (median over neurons);
- retrieval: share of visualizations whose nearest reference set (mean cosine, efficientnet_lite2 penultimate
  features, an independent network) is their own; chance 1/K;
- naturalness: high-frequency share of the spectral power (above a quarter of Nyquist), the visualization's over
  its references' (natural images near 1, pixel noise about 20);
- KID (Inception-v3 pool features, subsets of the visualizations' size) against all reference patches of the layer.
The row "references" holds out each neuron's top reference as its "visualization": the ceiling of these numbers.

Usage: python bench/quality_neuron.py [--steps 2000] [--methods vital,...] [--out bench/out/quality_neuron]
Runs are cached in OUT/runs, so a second call only recomputes what changed.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vital
from vital.evaluate.embedding import penultimate_features
from vital.evaluate.fid import InceptionFeatures
from vital.evaluate.kid import kid_from_features
from vital.evaluate.neuron import channel_spatial_max, naturalness_ratio, retrieval_from_features
from vital.io import contact_sheet, to_uint8, transparency_rgba
from vital.references.photos import corpus_source, photo_corpus

# name -> (method, options). "vital" is the library's default for channels; the others are the relevance
# alternatives, the ablations of bench/RESULTS.md and the activation-maximisation baselines.
METHODS: dict[str, tuple[str, dict]] = {
    "vital": ("vital", {}),
    "vital-lrp-restricted": ("vital", {"relevance": "lrp-restricted"}),
    "vital-guided-backprop": ("vital", {"relevance": "guided-backprop"}),
    "vital-none": ("vital", {"relevance": "none"}),
    "fourier": ("fourier", {}),
    "maco": ("maco", {}),
    # ablations, one change from the default each, then the authors' configuration
    "abl-multiply-mask": ("vital", {"mask": "multiply"}),
    "abl-target": ("vital", {"target_weight": 1.0}),
    "abl-no-unweighted": ("vital", {"unweighted": 0.0}),
    "abl-pixel": ("vital", {"param": "pixel"}),
    "abl-whole-images": ("vital", {}),  # references: top whole images instead of patches
    "faithful": ("vital", {"relevance": "lrp", "mask": "multiply", "target_weight": 0.0, "unweighted": 0.0,
                           "param": "pixel"}),
}
DEFAULT_METHODS = "vital,vital-lrp-restricted,vital-guided-backprop,vital-none,fourier,maco"
OVERLAP = 0.25


def choose_channels(store, layer: str, k: int, n: int) -> tuple[list[int], str]:
    """The rule (`MiningStore.distinct_channels`): strength = k-th / 1st top patch score; greedily the strongest
    whose top-k source photos have Jaccard overlap <= OVERLAP with every channel already chosen."""
    picked = store.distinct_channels(layer, n, k, OVERLAP, group=corpus_source)
    rule = (f"strongest {n} channels by k-th/1st top-{k} patch score, source-photo Jaccard <= {OVERLAP}: "
            + ", ".join(f"{c} ({s:.2f})" for c, s in picked))
    return [c for c, _ in picked], rule


def run_method(model, layer, channels, refs, name, steps, out: Path) -> dict:
    """Images, transparency maps and seconds of one method on one layer's neurons (cached on disk)."""
    cache = out / "runs" / name / f"{layer.replace('.', '_')}_{steps}.pt"
    if cache.is_file():
        return torch.load(cache)
    method, options = METHODS[name]
    t0 = time.perf_counter()
    res = vital.visualize(model, [vital.Channel(layer, c) for c in channels], refs, method=method, steps=steps,
                          seed=0, progress=False, **options)
    run = {"images": res.images, "alpha": res.grad_accumulator, "seconds": time.perf_counter() - t0,
           "step_ms": res.record["timings"]["step_ms"]}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(run, cache)
    return run


class Judge:
    """The reference side of every metric for one layer's neurons, computed once: the median spatial max of each
    channel on its references, their embeddings in the judge, their Inception features."""

    def __init__(self, model, judge, inception, layer, channels, refs01):
        self.model, self.judge, self.inception, self.layer, self.channels = model, judge, inception, layer, channels
        self.refs01, self.pooled = refs01, torch.cat(refs01)
        self.medians = [float(channel_spatial_max(model, layer, c, r).median()) for c, r in zip(channels, refs01, strict=True)]
        self.embeddings = [penultimate_features(judge, r) for r in refs01]
        self.ref_inception = inception(self.pooled)

    def __call__(self, images: torch.Tensor) -> dict:
        acts = [float(channel_spatial_max(self.model, self.layer, c, images[i:i + 1])[0]) / self.medians[i]
                for i, c in enumerate(self.channels)]
        ret = retrieval_from_features(penultimate_features(self.judge, images), self.embeddings)
        kid = kid_from_features(self.inception(images), self.ref_inception, subsets=100, subset_size=len(images))
        return {"activation": float(np.median(acts)), "activation_all": [round(a, 2) for a in acts],
                "retrieval": ret.top1, "ranks": ret.ranks, "naturalness": naturalness_ratio(images, self.pooled),
                "kid": kid.mean, "kid_std": kid.std, "kid_n": f"{kid.n_a}/{kid.n_b}"}


def reference_row(model, judge, inception, layer, channels, refs01) -> dict:
    """Each neuron's top reference as the 'visualization', judged against the rest of its set."""
    held = torch.stack([r[0] for r in refs01])
    return Judge(model, judge, inception, layer, channels, [r[1:] for r in refs01])(held)


def sheet(path: Path, layer: str, channels, run: dict, refs01, label: str) -> None:
    rows = []
    for i, c in enumerate(channels):
        img = run["images"][i]
        rows.append((f"{label}  {layer}:{c}", Image.fromarray(to_uint8(img)),
                     Image.fromarray(transparency_rgba(img, run["alpha"][i]), "RGBA"),
                     [Image.fromarray(to_uint8(r)) for r in refs01[i][:5]]))
    contact_sheet(rows, path, thumb=128, max_refs=5)


def comparison(path: Path, layer: str, channels, runs: dict[str, dict], refs01, n_refs: int = 3,
               thumb: int = 112) -> None:
    """One figure per layer: a row per neuron, a column per method, then its top references."""
    from PIL import ImageDraw

    names = list(runs)
    cols, head, pad = len(names) + n_refs, 16, 4
    sheet = Image.new("RGB", (cols * (thumb + pad) + pad, head + len(channels) * (thumb + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for j, label in enumerate(names + ["references"]):
        draw.text((pad + j * (thumb + pad), 2), label, fill="black")
    for i, c in enumerate(channels):
        y = head + i * (thumb + pad)
        tiles = [runs[n]["images"][i] for n in names] + list(refs01[i][:n_refs])
        for j, t in enumerate(tiles):
            sheet.paste(Image.fromarray(to_uint8(t)).resize((thumb, thumb), Image.Resampling.BICUBIC), (pad + j * (thumb + pad), y))
        draw.text((pad + 2, y + 2), f"{c}", fill="red")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--layers", default="_blocks.7,_blocks.12")
    ap.add_argument("--methods", default=DEFAULT_METHODS)
    ap.add_argument("--channels", type=int, default=8, help="neurons per layer")
    ap.add_argument("-k", type=int, default=12, help="reference patches per neuron")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="bench/out/quality_neuron")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    out = Path(a.out)
    model = vital.load_model("efficientnet_lite0", device=a.device)
    judge = vital.load_model("efficientnet_lite2", device=a.device)
    inception = InceptionFeatures(a.device)
    layers = a.layers.split(",")
    corpus = photo_corpus(out / "corpus", size=model.size)
    n_corpus = len(list(Path(corpus).glob("*.png")))
    store = vital.mine(model, layers, corpus, k=16, out=out / "store", progress=False)
    print(f"efficientnet_lite0, {a.steps} steps at {model.size}px, seed 0; corpus {n_corpus} crops of the offline "
          f"photos; references: top-{a.k} patches per neuron; device {a.device}")
    rows, results = [], {}
    for layer in layers:
        channels, rule = choose_channels(store, layer, a.k, a.channels)
        print(f"{layer}: {rule}")
        from torchvision.transforms.functional import to_tensor

        kinds = {"patches": [store.references(layer, c, kind="patches", n=a.k) for c in channels],
                 "images": [store.references(layer, c, kind="images", n=a.k) for c in channels]}
        refs01 = [r.load(lambda im: to_tensor(im.convert("RGB").resize((model.size, model.size), Image.Resampling.BICUBIC)))
                  for r in kinds["patches"]]
        rows.append(("references", layer, reference_row(model, judge, inception, layer, channels, refs01), None))
        judged = Judge(model, judge, inception, layer, channels, refs01)
        done = {}
        for name in a.methods.split(","):
            refs = kinds["images" if name == "abl-whole-images" else "patches"]
            run = done[name] = run_method(model, layer, channels, refs, name, a.steps, out)
            m = judged(run["images"])
            rows.append((name, layer, m, run))
            sheet(out / f"sheet_{name}_{layer.replace('.', '_')}.png", layer, channels, run, refs01, name)
        comparison(out / f"compare_{layer.replace('.', '_')}.png", layer, channels, done, refs01)
    print("| method | layer | activation (median ratio) | retrieval top-1 | naturalness ratio | KID x100 (± std) "
          "| KID n | s per image |")
    print("|---|---|---|---|---|---|---|---|")
    for name, layer, m, run in rows:
        secs = "" if run is None else f"{run['seconds'] / len(run['images']):.0f}"
        print(f"| {name} | {layer} | {m['activation']:.2f} | {m['retrieval']:.2f} (chance {1 / a.channels:.2f}) | "
              f"{m['naturalness']:.2f} | {100 * m['kid']:.2f} ± {100 * m['kid_std']:.2f} | {m['kid_n']} | {secs} |")
        results[f"{name}/{layer}"] = m
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"sheets: {out}/sheet_<method>_<layer>.png; numbers: {out / 'results.json'}")


if __name__ == "__main__":
    main()
