"""`vital report`: an HTML gallery of run folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from vital.cli.common import add_out

NAME = "report"


def add(sub) -> None:
    rp = sub.add_parser(NAME, help="write an HTML gallery of run folders")
    rp.add_argument("runs", nargs="+")
    add_out(rp)
    rp.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from vital.outputs.claim import RunFolder
    from vital.pages.report import gallery_from_runs, write_gallery

    rows = gallery_from_runs([Path(d) for d in a.runs])  # every record read (and checked) before the claim
    with RunFolder(a.out, a.overwrite, kind=NAME) as folder:
        folder.commit(lambda out: write_gallery(out, rows))
    print(folder.path / "report.html")
    return 0
