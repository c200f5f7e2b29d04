"""Command line: vital class | neuron | mine | demo | models | layers.

Every user error (a `VitalError`) is printed as one line starting with "error:" and exits with status 2."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from vital.errors import VitalError


def _floats(s: str) -> list[float]:
    try:
        return [float(v) for v in s.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{s}'") from e


def _names(s: str) -> list[str]:
    return [v.strip() for v in s.split(",") if v.strip()]


def _add_model(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--model", "-m", default=default, required=default is None,
                   help="model name (efficientnet_lite0, resnet50, vit_l_16, timm:NAME, ...)")
    p.add_argument("--weights", default="default",
                   help="'default' (pretrained, from disk), 'none' (random), a torchvision weights name, or a file")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available, else cpu)")


def _add_run(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--method", default="vital", help="vital (default)")
    g.add_argument("--steps", type=int, default=None, help="iterations (default per setting: 2000; setting 2: 20000)")
    g.add_argument("--setting", type=int, default=1, choices=(0, 1, 2),
                   help="0: 112px then 224px stages, 1: one 224px stage (default), 2: long run, other Adam betas")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--layers", type=_names, default=None, help="matched layers, comma-separated (default: preset)")
    g.add_argument("--layer-weights", type=_floats, default=None, help="one weight per matched layer")
    g.add_argument("--tv-l2", type=float, default=None)
    g.add_argument("--tv-l1", type=float, default=None)
    g.add_argument("--l2", type=float, default=None)
    g.add_argument("--jitter", type=int, default=30)
    g.add_argument("--flip", action="store_true")
    g.add_argument("--lr", type=float, default=1.0)
    g.add_argument("--warmup", type=int, default=100)
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _device(arg: str | None) -> str:
    import torch

    if arg:
        return arg
    return "cuda" if torch.cuda.is_available() else "cpu"


def _run_options(a: argparse.Namespace) -> dict:
    return dict(steps=a.steps, setting=a.setting, seed=a.seed, layers=a.layers, layer_weights=a.layer_weights,
                tv_l2=a.tv_l2, tv_l1=a.tv_l1, l2=a.l2, jitter=a.jitter, flip=a.flip, lr=a.lr, warmup=a.warmup,
                progress=not a.quiet)


def cmd_class(a: argparse.Namespace) -> int:
    from vital.io import ensure_writable
    from vital.models import load_model
    from vital.references.images import from_class_folder, from_folder
    from vital.targets import Class, parse_range
    from vital.visualize import visualize

    out = ensure_writable(a.out)
    classes = [k for spec in a.classes for k in parse_range(spec)]
    model = load_model(a.model, a.weights, _device(a.device))
    refs = []
    for k in classes:
        if a.refs_flat:
            refs.append(from_folder(a.refs, n=a.n, seed=a.seed))
        else:
            refs.append(from_class_folder(a.refs, k, n=a.n, seed=a.seed))
    result = visualize(model, [Class(k) for k in classes], refs, method=a.method, **_run_options(a))
    paths = result.save(out)
    _print_outputs(result, paths)
    return 0


def _print_outputs(result, paths: dict) -> None:
    for label, p in zip(result.labels, paths["images"], strict=True):
        print(f"{label}: {p}")
    if "sheet" in paths:
        print(f"contact sheet: {paths['sheet'][0]}")
    print(f"run record: {paths['record'][0]}")


def cmd_models(a: argparse.Namespace) -> int:
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


def cmd_layers(a: argparse.Namespace) -> int:
    import torch

    from vital.features import layer_table
    from vital.models import load_model

    model = load_model(a.model, None if a.weights == "default" else a.weights)
    x = torch.zeros(1, 3, model.size, model.size)
    rows = layer_table(model.module, x)
    width = max(len(n) for n, _, _ in rows)
    for name, kind, shape in rows:
        if a.all or kind not in ("ReLU", "ReLU6", "SiLU", "Identity", "Dropout", "ZeroPad2d"):
            print(f"{name:<{width}}  {kind:<24} {tuple(shape)}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from vital.demo import run_demo

    run_demo(a.out, steps=a.steps, device=_device(a.device), progress=not a.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vital", description="Feature visualization by distribution alignment (VITAL)")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("class", help="visualise class neurons (several --class values run as one batch)")
    _add_model(c)
    c.add_argument("--class", "-c", dest="classes", action="append", required=True,
                   help="class index, list or range (281,967 or 0-9); repeatable")
    c.add_argument("--refs", required=True,
                   help="ImageNet-style train folder (one sub-folder per class, sorted) or, with --refs-flat, a "
                        "folder of images of the class")
    c.add_argument("--refs-flat", action="store_true", help="--refs is one folder of images for every class")
    c.add_argument("-n", type=int, default=50, help="reference images per class (default 50)")
    _add_run(c)
    c.set_defaults(func=cmd_class)

    m = sub.add_parser("models", help="list model names and whether their weights are on disk")
    m.add_argument("--on-disk", action="store_true", help="only models whose weights are on disk")
    m.set_defaults(func=cmd_models)

    la = sub.add_parser("layers", help="list a model's dotted layer names with output shapes")
    la.add_argument("model")
    la.add_argument("--weights", default="none", help="weights do not change shapes; default: none")
    la.add_argument("--all", action="store_true", help="also activations, padding and identity modules")
    la.set_defaults(func=cmd_layers)

    d = sub.add_parser("demo", help="the embedded default: VITAL on efficientnet_lite0 with offline photos")
    d.add_argument("--out", "-o", default="out/demo")
    d.add_argument("--steps", type=int, default=None)
    d.add_argument("--device", default=None)
    d.add_argument("--quiet", "-q", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    try:
        return args.func(args)
    except VitalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())


