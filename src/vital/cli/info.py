"""`vital models`, `vital layers` and `vital demo`: what there is to visualise, and a first run."""

from __future__ import annotations

import argparse

from vital.cli.common import device

QUIET_KINDS = ("ReLU", "ReLU6", "SiLU", "GELU", "Identity", "Dropout", "ZeroPad2d")


def add(sub) -> None:
    m = sub.add_parser("models", help="list model names and whether their weights are on disk")
    m.add_argument("--on-disk", action="store_true", help="only models whose weights are on disk")
    m.set_defaults(func=models)

    la = sub.add_parser("layers", help="list a model's dotted layer names with output shapes")
    la.add_argument("model")
    la.add_argument("--weights", default="none", help="weights do not change shapes; default: none")
    la.add_argument("--all", action="store_true", help="also activations, padding and identity modules")
    la.set_defaults(func=layers)

    d = sub.add_parser("demo", help="the embedded default: VITAL on efficientnet_lite0 with offline photos")
    d.add_argument("--out", "-o", default="out/demo")
    d.add_argument("--steps", type=int, default=None)
    d.add_argument("--device", default=None)
    d.add_argument("--quiet", "-q", action="store_true")
    d.set_defaults(func=demo)


def models(a: argparse.Namespace) -> int:
    from vital.models.zoo import available_models

    rows = available_models()
    if a.on_disk:
        rows = [r for r in rows if r.weights_on_disk]
    width = max(len(r.name) for r in rows)
    for r in rows:
        mark = "yes" if r.weights_on_disk else "no "
        print(f"{r.name:<{width}}  weights on disk: {mark}  {r.source:<24} {r.where}")
    print("timm models (timm:NAME) load from the Hugging Face cache when timm is installed.")
    return 0


def layers(a: argparse.Namespace) -> int:
    import torch

    from vital.features import layer_table
    from vital.models import load_model

    model = load_model(a.model, a.weights)
    rows = layer_table(model.module, torch.zeros(1, 3, model.size, model.size))
    width = max(len(r.name) for r in rows)
    for r in rows:
        if a.all or r.kind not in QUIET_KINDS:
            print(f"{r.name:<{width}}  {r.kind:<24} {str(tuple(r.shape)):<20} {r.channels:>5} channels "
                  f"({r.layout.value})")
    return 0


def demo(a: argparse.Namespace) -> int:
    from vital.demo import run_demo

    run_demo(a.out, steps=a.steps, device=device(a), progress=not a.quiet)
    return 0
