"""`vital atlas`: a static site to browse whole layers, built incrementally in its own folder."""

from __future__ import annotations

import argparse

NAME = "atlas"


def add(sub) -> None:
    at = sub.add_parser(NAME, help="a static site to browse whole layers: batch outputs, runs, circuits, stores")
    at.add_argument("out", help="folder of the site (rebuilt incrementally; a folder not made by vital atlas is "
                                "refused)")
    at.add_argument("sources", nargs="+", help="batch outputs, run folders, circuit folders and mining stores")
    at.add_argument("--kid", action="store_true", help="each layer's KID of its visualizations against their own top "
                                                       "patches (Inception features; cached)")
    at.add_argument("--faithfulness", action="store_true", help="each neuron's path similarity with its references "
                    "(a plot on its page, the layer's mean on the index; cached)")
    at.add_argument("--quiet", "-q", action="store_true")
    at.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from vital.outputs.claim import RunFolder
    from vital.pages.atlas import build_atlas

    with RunFolder(a.out, kind=NAME, in_place=True) as folder:  # its own folder is updated where it stands
        index = folder.commit(lambda out: build_atlas(out, a.sources, progress=not a.quiet, kid=a.kid,
                                                                 faithfulness=a.faithfulness))
    print(f"atlas: {index}")
    return 0
