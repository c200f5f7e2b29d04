"""`vital mine`: one pass over an image folder, the top images and patches of every channel."""

from __future__ import annotations

import argparse

from vital.cli.common import device
from vital.errors import VitalError

NAME = "mine"


def add(sub) -> None:
    mi = sub.add_parser(NAME, help="one pass over an image folder: top-k images and patches for every channel")
    mi.add_argument("model")
    mi.add_argument("--weights", default="default")
    mi.add_argument("--device", default=None)
    mi.add_argument("--layers", required=True, help="comma-separated dotted layer names")
    mi.add_argument("--directions", action="append", default=[], metavar="LAYER=FILE",
                    help="also mine directions (a .npy/.pt of (C,) or (K, C)) of a layer, by their readout: the "
                         "references of `vital neuron --direction`; repeatable")
    mi.add_argument("--images", required=True, help="image folder (searched recursively)")
    mi.add_argument("-k", type=int, default=50, help="patches (from distinct images) per channel")
    mi.add_argument("--n-images", type=int, default=None, help="top images per channel (default: k)")
    mi.add_argument("--out", "-o", required=True, help="store folder (resumed if it exists)")
    mi.add_argument("--batch-size", type=int, default=32)
    mi.add_argument("--workers", type=int, default=0)
    mi.add_argument("--decode", choices=("pil", "device"), default="pil",
                    help="device: decode JPEG files and preprocess on the model's device (GPU mining; nvJPEG)")
    mi.add_argument("--no-resume", action="store_true")
    mi.add_argument("--grid", action="store_true", help="write a grid of the top patches per layer")
    mi.add_argument("--quiet", "-q", action="store_true")
    mi.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from vital.cli.options import names
    from vital.models import load_model
    from vital.references.mining import mine
    from vital.targets import load_directions

    layers = names(a.layers)
    directions = {}
    for spec in a.directions:
        layer, sep, path = spec.partition("=")
        if not sep or not layer or not path:
            raise VitalError(f"--directions takes LAYER=FILE (e.g. _blocks.7=dirs.npy), got '{spec}'")
        directions[layer] = [d.vector for d in load_directions(path, layer)]
    model = load_model(a.model, a.weights, device(a))
    store = mine(model, layers, a.images, k=a.k, n_images=a.n_images, out=a.out,
                 batch_size=a.batch_size, workers=a.workers, resume=not a.no_resume, progress=not a.quiet,
                 grid=a.grid, directions=directions or None, decode=a.decode)
    for layer in store.layers:
        info = store.index["layers"][layer]
        print(f"{layer}: {info.get('channels')} channels, top-{a.k} patches and images per channel")
    print(f"store: {store.path} ({store.index.get('images_processed')} images)")
    return 0
