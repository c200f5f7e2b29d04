"""The paper's comparison on efficientnet_lite0 with the offline photo classes: VITAL, MACO, Fourier and
DeepInversion at their usual lengths, judged by the target model, by efficientnet_lite1/lite2, and by FID against
the references; writes the table, the embedding plot and the gallery (report.html) under --out.
Expected, as in the paper: VITAL above MACO and Fourier in independent-classifier top-5, and VITAL's FID below theirs.
Usage: python bench/compare.py [--out bench/out/compare]
"""

from __future__ import annotations

import argparse
import warnings

import torch

import vital
from vital.compare import compare
from vital.references.photos import OFFLINE_PHOTOS, photo_references

STEPS = {"vital": 1000, "fourier": 512, "maco": 256, "deepinversion": 1000}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", default=",".join(map(str, OFFLINE_PHOTOS)))
    ap.add_argument("--methods", default="vital,maco,fourier,deepinversion")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every method's steps (quick checks)")
    ap.add_argument("--refs", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="bench/out/compare")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    classes = [int(c) for c in a.classes.split(",")]
    methods = a.methods.split(",")
    model = vital.load_model("efficientnet_lite0", device=a.device)
    refs = {k: photo_references(k, n=a.refs) for k in classes}
    per_method = {m: {"steps": max(1, round(STEPS[m] * a.scale))} for m in methods}
    per_method["deepinversion"] = {**per_method.get("deepinversion", {}), "setting": 0}
    res = compare(model, classes, refs, methods=methods, out=a.out, progress=False, method_options=per_method)
    print(f"efficientnet_lite0; classes {classes}; steps {per_method}; references: {a.refs} views of each photo")
    print(res.table.to_markdown())
    print(f"gallery: {res.report}")


if __name__ == "__main__":
    main()
