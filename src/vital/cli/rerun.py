"""`vital rerun`: repeat a run from its record (same model, targets, options, seed, references)."""

from __future__ import annotations

import argparse

from vital.cli.common import print_outputs
from vital.outputs.record import RECORD

NAME = "rerun"


def add(sub) -> None:
    rr = sub.add_parser(NAME, help=f"repeat a run from its {RECORD} (same model, targets, options, seed, refs)")
    rr.add_argument("record", help=f"{RECORD} or the run folder holding it")
    rr.add_argument("--out", "-o", required=True)
    rr.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    rr.add_argument("--device", default=None)
    rr.add_argument("--weights", default=None, help="weights file, when the recorded one is elsewhere")
    rr.add_argument("--quiet", "-q", action="store_true")
    rr.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from vital.outputs.claim import RunFolder
    from vital.outputs.record import RunRecord
    from vital.run.repeat import reproducibility, rerun

    record = RunRecord.read(a.record)
    with RunFolder(a.out, a.overwrite):
        result = rerun(record, device=a.device, progress=not a.quiet, weights=a.weights)
        print_outputs(result, result.save(a.out, overwrite=a.overwrite))
    print(reproducibility(record, result, a.device))
    return 0
