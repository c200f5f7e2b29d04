"""`vital compare`: several methods on several classes, judged, in a table and a gallery."""

from __future__ import annotations

import argparse

from vital.cli.common import add_model, add_run, device, refs
from vital.cli.options import check
from vital.errors import VitalError

NAME = "compare"


def add(sub) -> None:
    cp = sub.add_parser(NAME, help="run several methods on several classes, evaluate, table + gallery")
    add_model(cp)
    cp.add_argument("--classes", required=True, help="class indices or ranges, e.g. 281,967")
    cp.add_argument("--methods", default="vital,maco,fourier,deepinversion")
    cp.add_argument("--refs", required=True, help="ImageNet-style train folder, a flat folder with --refs-flat, "
                                                  "or 'offline' for the scikit-image photos")
    cp.add_argument("--refs-flat", action="store_true")
    cp.add_argument("-n", type=int, default=50, help="reference images per class")
    cp.add_argument("--judges", default="efficientnet_lite1,efficientnet_lite2", help="independent classifiers")
    cp.add_argument("--no-fid", action="store_true", help="skip FID")
    cp.add_argument("--clip-weights", default=None, help="local open_clip weights file for CLIP zero-shot")
    add_run(cp)
    cp.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    """The comparison is written where it stands (its table names the images by their final paths), under the
    claim: a foreign folder is refused, an earlier comparison is moved aside and removed only once this one is
    complete (restored if it fails)."""
    from vital.compare import compare
    from vital.metrics.clip import check_weights_file
    from vital.models import load_model
    from vital.outputs.claim import RunFolder
    from vital.targets import Class, parse_names, parse_range

    classes = parse_range(a.classes)
    options = check(a)
    if a.refs == "none":
        raise VitalError("compare judges every method against real images of each class (FID, the embedding): "
                         "pass --refs (a class folder, a folder with --refs-flat, or offline)")
    if a.clip_weights:
        check_weights_file(a.clip_weights)
    with RunFolder(a.out, a.overwrite, kind=NAME) as folder:
        model = load_model(a.model, a.weights, device(a))
        sets = dict(zip(classes, refs(a, [Class(k) for k in classes], classes=True), strict=True))
        result = folder.commit_in_place(lambda out: compare(
            model, classes, sets, methods=parse_names(a.methods), out=out, judges=parse_names(a.judges),
            fid=not a.no_fid, clip_weights=a.clip_weights, **options))
    print(result.table.to_markdown())
    print(f"table: {result.out / 'table.md'} (.csv, .json); embedding: {result.out / 'embedding.png'}")
    print(f"gallery: {result.report}")
    return 0
