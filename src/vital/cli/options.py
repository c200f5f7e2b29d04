"""The optimisation flags, generated from the option dataclasses (`RunOptions` and each registered method's own,
e.g. `VitalOptions`), so a new option appears on the command line, is checked and reaches `visualize` without
being listed again here. Only the help texts (and the few choices argparse should show) are written by hand; a method option's default is
added to its help from the method's own declaration (`vital.methods.option_defaults`), never written here."""

from __future__ import annotations

import argparse
from dataclasses import Field, fields
from typing import Any

from vital.errors import VitalError

# fields that are not flags: the progress bar is --quiet, the diversity layer follows the target
HIDDEN = {"progress", "diversity_layer"}

HELP: dict[str, str] = {
    "steps": "iterations (default per setting: 2000; setting 2: 20000)",
    "setting": "0: 112px then 224px stages, 1: one 224px stage (default), 2: long run, other Adam betas",
    "seed": "seed of the initial image and of the reference sample (default 0)",
    "jitter": "max circular shift in px (VITAL default 30)",
    "flip": "random horizontal flips",
    "lr": "Adam learning rate (VITAL default 1.0)",
    "warmup": "warmup steps (default 100)",
    "copies": "images per target, optimised together (default 1)",
    "diversity": "weight of the diversity term among a target's copies (lucent's; e.g. 0.5 with --copies 3)",
    "layers": "matched layers, comma-separated (default: preset)",
    "layer_weights": "one weight per matched layer, comma-separated",
    "feat_dist": "a factor on every layer weight",
    "relevance": "channels: relevance of the target that weights the alignment: lrp, lrp-restricted, "
                 "guided-backprop or none",
    "mask": "channels: reference: align to the references' relevance-weighted distributions; "
            "multiply: the authors' per-step masks of the image's features",
    "target_weight": "channels: weight of matching the target channel's own distribution",
    "unweighted": "channels: weight of plain alignment beside the relevance-weighted one",
    "param": "image parameterization: fourier, the decorrelated spectrum, or pixel, the paper's image",
    "activation": "channels: weight of the target unit's mean activation, maximised beside the alignment; "
                  "0 is the alignment alone, as the paper",
    "sliced": "channels: weight of sliced-Wasserstein alignment along random channel directions",
    "projections": "channels: number of those directions (default: one per channel)",
    "augment": "channels: none or scale-rotate (random scaling and rotation of every step's image)",
    "relevance_rules": "channels: the rule chain's LRP rule per layer type, a preset: zplus (z+ for Conv2d and "
                       "Linear, the paper's), epsilon-plus (z+ for Conv2d, epsilon for Linear, as zennit's "
                       "EpsilonPlus) or epsilon (epsilon for both); Python also takes a {type: rule} map",
    "magnitude": "maco: a magnitude spectrum file (default: the references' mean amplitude spectrum)",
    "crops": "maco: random crops per image and step",
    "bn_weight": "deepinversion: weight of the BatchNorm statistics term",
}


def _floats(s: str) -> list[float]:
    try:
        return [float(v) for v in s.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{s}'") from e


def names(s: str) -> list[str]:
    """A comma-separated list of names; an empty one (`--layers ,`) is an error, never 'the default'."""
    names = [v.strip() for v in s.split(",") if v.strip()]
    if not names:
        raise VitalError(f"'{s}' names no layer; give comma-separated names (see `vital layers MODEL`) or leave the "
                         "flag out for the preset's")
    return names


class _Names(str):
    """A raw names value, turned into a list (or a one-line error) when the command runs, not by argparse."""


def _kind(f: Field) -> dict[str, Any]:
    """argparse keyword arguments for a dataclass field, from its type (a string under postponed annotations, else
    a type whose text is the same): numbers, flags, names and number lists."""
    text = str(f.type)
    if "bool" in text:
        return {"action": "store_true"}
    if "Sequence[float]" in text:
        return {"type": _floats, "metavar": "W,W,..."}
    if "Sequence[str]" in text:
        return {"type": _Names, "metavar": "NAME,NAME,..."}
    if "int" in text and "float" not in text:
        return {"type": int}
    if "float" in text:
        return {"type": float}
    return {"type": str}


def default_note(method: str, name: str) -> str:
    """A method option's default as its help states it: "default 1", or "default: classes X, channels Y" where the
    two kinds of target differ; "" when the option has no fixed default (the preset's layers, say)."""
    from vital.methods import option_defaults
    from vital.methods.history import shown

    by_group = {g: d.get(name) for g, d in option_defaults(method).items()}
    values = {v for v in by_group.values() if v is not None}
    if not values:
        return ""
    if len(values) == 1:
        return f"default {shown(values.pop())}"
    return "default: " + ", ".join(f"{g}es {shown(v)}" if g == "class" else f"{g}s {shown(v)}"
                                   for g, v in by_group.items() if v is not None)


def help_text(method: str | None, name: str) -> str | None:
    """The help of option `name`: the hand-written text, and the default `method` declares for it."""
    text, note = HELP.get(name), default_note(method, name) if method else ""
    return f"{text} ({note})" if text and note else text or note or None


def option_fields() -> list[tuple[str, list[Field]]]:
    """(group title, fields) for the loop's options and each registered method's own, each field once."""
    from vital.methods import METHODS, RunOptions

    return [(title, group_fields) for title, _, group_fields in _groups(METHODS, RunOptions)]


def _groups(methods: dict, run_options: type) -> list[tuple[str, str | None, list[Field]]]:
    """(title, the method that owns the fields or None for the loop's, fields), each field once."""
    groups: list[tuple[str, str | None, list[Field]]] = [
        ("optimisation", None, [f for f in fields(run_options) if f.name not in HIDDEN])]
    seen = {f.name for f in fields(run_options)}
    for name, method in sorted(methods.items(), key=lambda kv: kv[0] != "vital"):
        own = [f for f in fields(method.options) if f.name not in seen]
        seen |= {f.name for f in own}
        if own:
            groups.append((f"{name} options", name, own))
    return groups


def add_option_flags(p: argparse.ArgumentParser, method_default: str | None = "vital",
                     skip: frozenset[str] = frozenset()) -> None:
    """--method and one flag per option field (but those in `skip`); every default is None ("the method's
    default")."""
    from vital.methods import METHODS, RunOptions

    p.add_argument("--method", default=method_default, help="vital (default), maco, fourier, pixel, deepinversion")
    for title, owner, group_fields in _groups(METHODS, RunOptions):
        g = p.add_argument_group(title)
        for f in group_fields:
            if f.name in skip:
                continue
            g.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, help=help_text(owner, f.name),
                           **_kind(f))


def given(a: argparse.Namespace, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The option flags given on the command line (not None), with names lists read and checked."""
    out: dict[str, Any] = {}
    for _, group_fields in option_fields():
        for f in group_fields:
            v = getattr(a, f.name, None)
            if isinstance(v, _Names):
                v = names(v)
            if f.name not in skip and v is not None:
                out[f.name] = v
    return out


def collect(a: argparse.Namespace) -> dict[str, Any]:
    """The options of a run given on the command line, and the progress bar unless --quiet."""
    return {**given(a), "progress": not getattr(a, "quiet", False)}


def check(a: argparse.Namespace) -> dict[str, Any]:
    """Every number and choice of the run, checked before any model or reference is loaded; returns the options
    for `visualize`."""
    from vital.methods import RunOptions, split_options

    options = collect(a)
    run, _ = split_options(a.method, options)
    RunOptions(**run)
    return options
