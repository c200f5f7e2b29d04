"""mkdocs hook: pages generated at build time, so that they cannot drift from the code.

- reference/cli.md: every `vital` sub-command's --help, from the argument parser itself (`vital.cli.build_parser`);
- benchmarks.md: bench/RESULTS.md, the measured tables, as they are in the repository."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "src") not in sys.path:  # document this checkout, whatever else is installed
    sys.path.insert(0, str(ROOT / "src"))
WIDTH = "100"  # argparse wraps help to $COLUMNS: a fixed width makes the page the same on every machine


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps sub-parsers in its one _SubParsersAction
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_page() -> str:
    os.environ["COLUMNS"] = WIDTH
    from vital.cli import build_parser

    parser = build_parser()
    subs = _subcommands(parser)
    lines = ["# Command line", "",
             "Generated from the argument parser at build time (`vital <command> --help` prints the same).", "",
             "```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in sorted(subs.items()):
        lines += [f"## vital {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def benchmarks_page() -> str:
    # RESULTS.md links pictures relative to bench/ (../docs/images/...); this page sits at the docs root
    results = (ROOT / "bench" / "RESULTS.md").read_text().replace("](../docs/images/", "](images/")
    head = ("!!! note\n    This page is `bench/RESULTS.md` of the repository, included at build time. How to run the "
            "benchmarks and record new figures: CONTRIBUTING.md.\n\n")
    title, _, body = results.partition("\n")
    return f"{title}\n\n{head}{body}"


def on_files(files: Files, config) -> Files:
    for uri, content in (("reference/cli.md", cli_page()), ("benchmarks.md", benchmarks_page())):
        files.append(File.generated(config, uri, content=content))
    return files
