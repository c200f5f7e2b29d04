"""Quality of VITAL class visualizations on efficientnet_lite0, with references that exist offline: one photograph
per class, its references `--refs` seeded random views of it (`vital.references.photos.views`).

Classes: the five of `OFFLINE_PHOTOS`, 652 military uniform (matplotlib's grace_hopper.jpg, lite0's and lite1's
top-1 on the photo), and three photos no earlier tuning used (`UNSEEN`: 892 wall clock, 985 daisy, 698 palace).
Variants: `--params pixel,fourier` runs the paper's pixel image and the decorrelated Fourier image
(`param="fourier"`), each as one batch, same steps and seed. Per image: the target model's top-1 and the rank it
gives the class, the independent judges' (efficientnet_lite1/lite2) ranks, and HF = the high-frequency share of
spectral power (above a quarter of Nyquist) of the image over that of its reference photo (1: as sharp as the
photo; stripes and pixel noise raise it). The photos themselves are judged as the first row group (what the judges
can do on real photos). Summary figures carry a 95% percentile bootstrap interval over classes (few classes: wide).
Usage: python bench/quality_class.py [--steps 1000] [--params pixel,fourier] [--out bench/out/quality_class]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.functional import to_tensor

import vital
from vital.metrics.classify import load_judges, topk_accuracy
from vital.metrics.neuron import high_frequency_share
from vital.references.images import ReferenceSet, load_rgb
from vital.references.photos import OFFLINE_PHOTOS, offline_photo_files, views

sys.path.insert(0, str(Path(__file__).parent))
from intervals import bootstrap  # noqa: E402
from sheets import grid  # noqa: E402

# Photos that no earlier tuning used: a motion-blurred wall clock (scikit-image), and scikit-learn's two sample
# photos (a daisy, the Summer Palace), each the class that lite0 and lite1 give the photo.
UNSEEN = {892: "clock_motion.png", 985: "flower.jpg", 698: "china.jpg"}
PHOTOS = {**OFFLINE_PHOTOS, 652: "grace_hopper.jpg", **UNSEEN}


def photo_file(name: str) -> str:
    import sklearn.datasets

    sklearn_images = Path(sklearn.datasets.__file__).parent / "images"
    files = [*offline_photo_files(), *map(str, sorted(sklearn_images.glob("*.jpg")))]
    return next(f for f in files if Path(f).name == name)


def references(cls: int, n: int, seed: int) -> ReferenceSet:
    name = PHOTOS[cls]
    imgs = [(f"{name}#view{i}(seed={seed})", im) for i, im in enumerate(views(load_rgb(photo_file(name)), n, seed))]
    return ReferenceSet(images=imgs, source=f"{name} ({n} views, seed {seed})", requested=n,
                        origin={"kind": "photo", "class": cls, "name": name, "n": n, "seed": seed})


def judged(model, judges, images, classes, hf_photo) -> dict:
    own = topk_accuracy(model, images, classes)
    scores = {j.name: topk_accuracy(j, images, classes) for j in judges}
    hf = high_frequency_share(images) / hf_photo
    return {"own_ranks": np.array(own["ranks"]), "top": [t[0] for t in own["top_classes"]],
            "judge_ranks": np.array([scores[j.name]["ranks"] for j in judges]), "hf": hf}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--refs", type=int, default=32, help="views of each photo used as references")
    ap.add_argument("--classes", default=",".join(map(str, PHOTOS)))
    ap.add_argument("--params", default="pixel,fourier")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sheet", default="", help="also write a JPEG contact sheet here (photo, then each variant)")
    ap.add_argument("--out", default="bench/out/quality_class")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    classes = [int(c) for c in a.classes.split(",")]
    model = vital.load_model("efficientnet_lite0", device=a.device)
    judges = load_judges(["efficientnet_lite1", "efficientnet_lite2"], a.device)
    refs = [references(k, a.refs, a.seed) for k in classes]
    photos = [to_tensor(load_rgb(photo_file(PHOTOS[k]))) for k in classes]
    hf_photo = np.array([high_frequency_share([p])[0] for p in photos])
    rows = {"photo": judged(model, judges, photos, classes, hf_photo)}
    images, seconds = {}, {}
    for param in a.params.split(","):
        cache = out / f"{param}_{a.steps}_{a.seed}_{'-'.join(map(str, classes))}.pt"
        if cache.is_file():
            images[param], seconds[param] = torch.load(cache)
        else:
            t0 = time.perf_counter()
            res = vital.visualize(model, [vital.Class(k) for k in classes], refs, steps=a.steps, seed=a.seed,
                                  param=param, progress=False)
            images[param], seconds[param] = res.images.cpu(), time.perf_counter() - t0
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save((images[param], seconds[param]), cache)
        rows[param] = judged(model, judges, images[param], classes, hf_photo)
    n = len(classes)
    lines = [f"efficientnet_lite0, VITAL, {a.steps} steps at {model.size}px, {a.refs} reference views per class, "
             f"seed {a.seed}, device {a.device}; " + ", ".join(f"{p}: {s:.0f} s for the batch of {n}"
                                                              for p, s in seconds.items()),
             "", "| image | class | lite0 top-1 | lite0 rank | lite1 rank | lite2 rank | HF vs photo |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        for i, k in enumerate(classes):
            lines.append(f"| {name} | {k} {model.class_name(k)} | {model.class_name(r['top'][i])} | "
                         f"{r['own_ranks'][i]} | {r['judge_ranks'][0][i]} | {r['judge_ranks'][1][i]} | "
                         f"{r['hf'][i]:.2f} |")

    def ci(values: np.ndarray) -> str:
        v, lo, hi = bootstrap(lambda i: float(values[i].mean()), n)
        return f"{v:.2f} [{lo:.2f}, {hi:.2f}]"

    lines += ["", f"Summary over the {n} classes (95% percentile bootstrap over classes):", "",
              "| image | lite0 top-1 | lite1 top-1 | lite1 top-5 | lite2 top-1 | lite2 top-5 | HF vs photo (mean) |",
              "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        jr = r["judge_ranks"]
        figures = [r["own_ranks"] == 1, jr[0] == 1, jr[0] <= 5, jr[1] == 1, jr[1] <= 5, r["hf"]]
        lines.append(f"| {name} | " + " | ".join(ci(np.asarray(f, float)) for f in figures) + " |")
    table = "\n".join(lines)
    print(table)
    (out / "table.md").write_text(table + "\n")
    if a.sheet:
        grid(Path(a.sheet), [[p, *(images[v][i] for v in images)] for i, p in enumerate(photos)],
             ["photo", *images], [f"{k} {model.class_name(k)}" for k in classes], thumb=128)
        print(f"contact sheet: {a.sheet}")


if __name__ == "__main__":
    main()
