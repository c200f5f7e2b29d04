"""`vital eval`: judge the visualizations of run folders (classes: top-k, CLIP, FID and KID; classes and neurons:
path similarity with --faithfulness)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vital.cli.common import add_out, device, refs
from vital.errors import VitalError
from vital.outputs.record import RECORD

NAME = "eval"


def add(sub) -> None:
    ev = sub.add_parser(NAME, help="judge the class visualizations of run folders (top-k by models, CLIP, "
                                   "FID and KID with --fid)")
    ev.add_argument("runs", nargs="+", help=f"run folders (with {RECORD})")
    ev.add_argument("--model", "-m", default=None, help="the target model, to report its own top-k")
    ev.add_argument("--weights", default="default")
    ev.add_argument("--device", default=None)
    ev.add_argument("--judges", default="efficientnet_lite1,efficientnet_lite2")
    ev.add_argument("--clip-weights", default=None)
    ev.add_argument("--fid", action="store_true", help="FID and KID against real images of each class (--refs)")
    ev.add_argument("--refs", default=None, help="real images per class for --fid and the embedding: a class "
                                                 "folder, a folder of images, or offline")
    ev.add_argument("--refs-flat", action="store_true")
    ev.add_argument("-n", type=int, default=50, help="real images per class")
    ev.add_argument("--faithfulness", action="store_true", help="path similarity of every class and neuron "
                    "visualization with its references, from floor (0) to ceiling (1); docs/concepts/faithfulness.md")
    ev.add_argument("--floor", default=None, help="a folder of natural images for --faithfulness's floor (default: "
                                                  "views of the offline photos)")
    add_out(ev)
    ev.set_defaults(func=run)


def _runs(a: argparse.Namespace) -> tuple[list[Path], list]:
    from vital.compare import visuals_from_runs

    runs = [Path(d) for d in a.runs]
    for d in runs:
        if not (d / RECORD).is_file():
            raise VitalError(f"{d} is not a run folder (no {RECORD}); pass folders written by vital class/compare")
    visuals = visuals_from_runs(runs)
    if not visuals and not a.faithfulness:
        raise VitalError("the run folders hold no class visualizations to evaluate; neuron runs are judged with "
                         "--faithfulness")
    if a.fid and not a.refs:
        raise VitalError("--fid compares with real images of each class: pass them with --refs (a class folder, a "
                         "folder of one class's images, or offline)")
    if a.clip_weights:
        from vital.metrics.clip import check_weights_file

        check_weights_file(a.clip_weights)
    return runs, visuals


def run(a: argparse.Namespace) -> int:
    from vital.models import load_model
    from vital.outputs.claim import RunFolder

    runs, visuals = _runs(a)
    dev = device(a)
    with RunFolder(a.out, a.overwrite, kind=NAME) as folder:
        model = load_model(a.model, a.weights, dev) if a.model else None
        real = _real_images(a, sorted({v.target_class for v in visuals})) if a.refs else None
        table, page = folder.commit(lambda out: _write(a, runs, visuals, model, real, dev, out, folder.path))
    print(table.to_markdown())
    print(f"gallery: {page}")
    return 0


def _write(a: argparse.Namespace, runs: list[Path], visuals: list, model, real, dev, out: Path, final: Path):
    """Table, metrics and gallery into `out` (renamed to `final` when complete); the run folders are only read."""
    from vital.compare import run_metrics, write_table
    from vital.metrics.evaluation import evaluate
    from vital.outputs.io import write_json
    from vital.pages.report import gallery_from_runs, write_gallery
    from vital.targets import parse_names

    table = evaluate(visuals, model, classifiers=parse_names(a.judges), real_images=real, fid=a.fid,
                     clip_weights=a.clip_weights, embedding_path=out / "embedding.png", device=dev,
                     progress=not a.quiet) if visuals else None
    if a.faithfulness:
        from vital.metrics.faithful_runs import add_faithfulness, folder_pool, score_runs

        pool = folder_pool(a.floor) if a.floor else None
        table = add_faithfulness(table, score_runs(runs, model, dev, pool, progress=not a.quiet))
    assert table is not None
    metrics = run_metrics(table, runs)
    write_json(metrics, out / "metrics.json")
    write_gallery(out, gallery_from_runs(runs, metrics), table=table)
    if "embedding" in table.meta:  # the table names the plot where it will be, not in the temporary folder
        table.meta["embedding"] = str(final / "embedding.png")
    write_table(table, out)
    return table, final / "report.html"


def _real_images(a: argparse.Namespace, classes: list[int]) -> dict[int, list]:
    """Real images per class for FID/KID and the embedding, by the shared --refs rule, as files or [0,1] tensors."""
    from torchvision.transforms.functional import to_tensor

    from vital.targets import Class

    sets = refs(a, [Class(k) for k in classes], classes=True)
    return {k: list(r.files) + [to_tensor(im.convert("RGB")) for _, im in r.images]
            for k, r in zip(classes, sets, strict=True)}
