"""Flags and steps shared by several commands: the model, the output folder, references, run options."""

from __future__ import annotations

import argparse
import warnings
from collections import Counter
from typing import Any

from vital.cli.options import add_option_flags
from vital.errors import VitalError


def add_model(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--model", "-m", default=default, required=default is None,
                   help="model name (efficientnet_lite0, resnet50, vit_l_16, timm:NAME, ...)")
    p.add_argument("--weights", default="default",
                   help="'default' (pretrained, from disk), 'none' (random), a torchvision weights name, or a file")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available, else cpu)")


def add_out(p: argparse.ArgumentParser, what: str = "output folder", overwrite: bool = True) -> None:
    p.add_argument("--out", "-o", required=True, help=what)
    if overwrite:
        p.add_argument("--overwrite", action="store_true", help="replace what this command wrote to --out before")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def add_run(p: argparse.ArgumentParser) -> None:
    """The optimisation flags (generated from the option dataclasses) and the output folder of a run."""
    add_option_flags(p)
    add_out(p)


def refs(a: argparse.Namespace, targets: list, classes: bool) -> list:
    """One reference set per target, by the shared --refs rule (vital.references.refs_rule)."""
    from vital.references.refs_rule import ReferenceSpec

    kind = getattr(a, "ref_kind", None)
    spec = ReferenceSpec.from_flag(a.refs, getattr(a, "refs_flat", False), classes, a.n, kind or "patches")
    if kind is not None and spec.source != "store":
        raise VitalError(f"--ref-kind {kind} picks a mining store's top images or patches, but --refs {a.refs} is a "
                         f"{spec.source}; drop --ref-kind or pass a store made by vital mine")
    return spec.resolve(targets, seed=getattr(a, "seed", None) or 0)


def once(targets: list, what: str) -> list:
    """Targets in order without repeats; a repeat is said in one line (it would be optimised twice and one file
    would overwrite the other)."""
    unique = list(dict.fromkeys(targets))
    if len(unique) < len(targets):
        twice = sorted(str(t) for t, c in Counter(targets).items() if c > 1)
        warnings.warn(f"{what} {', '.join(twice[:5])} given more than once: visualised once", stacklevel=2)
    return unique


def print_outputs(result: Any, paths: dict) -> None:
    for label, p in zip(result.labels, paths["images"], strict=True):
        print(f"{label}: {p}")
    if "sheet" in paths:
        print(f"contact sheet: {paths['sheet'][0]}")
    print(f"run record: {paths['record'][0]}")


def device(a: argparse.Namespace):
    from vital.models.zoo import resolve_device

    return resolve_device(a.device)
