"""Quality of VITAL class visualizations on efficientnet_lite0, with references that exist offline.

Full-length runs (default 1000 steps at 224, all offline photo classes in one batch); prints, for each image, the
target model's top-1 and the rank it gives the class, and the independent judges' (efficientnet_lite1/lite2) top-5
membership. Expected: the target model's top-1 is the class; an independent model puts it in its top-5.
Writes the images, transparency maps, contact sheet and a Markdown table under --out.
Usage: python bench/quality_class.py [--steps 1000] [--out bench/out/quality_class]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import vital
from vital.evaluate.classify import load_judges, topk_accuracy
from vital.references.photos import OFFLINE_PHOTOS, photo_references


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--refs", type=int, default=32, help="views of each photo used as references")
    ap.add_argument("--classes", default=",".join(map(str, OFFLINE_PHOTOS)))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="bench/out/quality_class")
    a = ap.parse_args()
    classes = [int(c) for c in a.classes.split(",")]
    model = vital.load_model("efficientnet_lite0", device=a.device)
    refs = [photo_references(k, n=a.refs, seed=a.seed) for k in classes]
    res = vital.visualize(model, [vital.Class(k) for k in classes], refs, steps=a.steps, seed=a.seed)
    paths = res.save(Path(a.out))
    judges = load_judges(["efficientnet_lite1", "efficientnet_lite2"], a.device)
    own = topk_accuracy(model, res.images, classes)
    scores = {j.name: topk_accuracy(j, res.images, classes) for j in judges}
    lines = [f"efficientnet_lite0, VITAL, {a.steps} steps at {model.size}px, {a.refs} reference views per class, "
             f"seed {a.seed}, {res.record['timings']['optimise_s']:.0f} s for the batch of {len(classes)} "
             f"on {res.record['device']}",
             "",
             "| class | photo | lite0 top-1 | lite0 rank of class | lite1 rank | lite2 rank | in a judge's top-5 |",
             "|---|---|---|---|---|---|---|"]
    for i, k in enumerate(classes):
        ranks = [scores[j.name]["ranks"][i] for j in judges]
        top1 = model.class_name(own["top_classes"][i][0]) if "top_classes" in own else "?"
        lines.append(f"| {k} {model.class_name(k)} | {OFFLINE_PHOTOS[k]} | {top1} | {own['ranks'][i]} | "
                     f"{ranks[0]} | {ranks[1]} | {'yes' if min(ranks) <= 5 else 'no'} |")
    table = "\n".join(lines)
    print(table)
    (Path(a.out) / "table.md").write_text(table + "\n")
    print(f"contact sheet: {paths['sheet'][0]}")


if __name__ == "__main__":
    main()
