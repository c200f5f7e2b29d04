"""`vital class`: visualise class neurons (several classes run as one batch)."""

from __future__ import annotations

import argparse

from vital.cli.common import add_model, add_run, device, once, print_outputs, refs
from vital.cli.options import check

NAME = "class"


def add(sub) -> None:
    c = sub.add_parser(NAME, help="visualise class neurons (several --class values run as one batch)")
    add_model(c)
    c.add_argument("--class", "-c", dest="classes", action="append", required=True,
                   help="class index, list or range (281,967 or 0-9); repeatable")
    c.add_argument("--refs", required=True,
                   help="ImageNet-style train folder (one sub-folder per class: WordNet ids such as n01440764 are "
                        "read by id, other names by sorted position), a plain folder of images of the class "
                        "(recognised: it has no sub-folders), or 'offline' for views of the scikit-image photos")
    c.add_argument("--refs-flat", action="store_true", help="--refs is one folder of images for every class, even "
                                                             "if it has sub-folders")
    c.add_argument("-n", type=int, default=50, help="reference images per class (default 50)")
    add_run(c)
    c.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from vital.models import load_model
    from vital.outputs.claim import RunFolder
    from vital.run.execute import visualize
    from vital.targets import Class, parse_range

    classes = once([k for spec in a.classes for k in parse_range(spec)], "class")
    options = check(a)
    with RunFolder(a.out, a.overwrite):  # claimed for the whole run: checked before any long computation
        model = load_model(a.model, a.weights, device(a))
        targets = [Class(k) for k in classes]
        result = visualize(model, targets, refs(a, targets, classes=True), method=a.method, **options)
        print_outputs(result, result.save(a.out, overwrite=a.overwrite))
    return 0
