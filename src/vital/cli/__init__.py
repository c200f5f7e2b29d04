"""The command line: one module per command, each with `add(sub)` (its parser) and the function it runs."""

# Commands: vital class | neuron | circuit | mine | compare | eval | report | atlas | rerun | batch | demo | models |
# layers. Every user error (a `VitalError`) is printed as one line starting with "error:" and exits with status 2.

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from vital._version import __version__
from vital.cli import atlas, batch, circuit, classes, compare, evaluation, info, mine, neuron, report, rerun
from vital.errors import VitalError

COMMANDS = (classes, neuron, circuit, compare, evaluation, mine, rerun, report, atlas, batch, info)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (the docs list every command and flag from it)."""
    p = argparse.ArgumentParser(prog="vital", description="Feature visualization by distribution alignment (VITAL)")
    p.add_argument("--version", action="version", version=f"vital {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add(sub)
    return p


def _one_line(message, category, filename, lineno, line=None) -> str:
    """Notes and warnings as one line each, without the source line that Python's format adds."""
    return f"note: {message}\n" if category is UserWarning else f"{category.__name__}: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = _one_line
    try:
        if getattr(args, "out", None) is not None:
            from vital.outputs.claim import out_path

            out_path(args.out)  # an empty or over-long name is refused before anything runs
        return args.func(args)
    except VitalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
