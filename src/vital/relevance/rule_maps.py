"""LRP rules as data: which rule the rule chain applies to each weighted layer type (zennit calls such a map a
composite), by a named preset or a {layer type: rule} map. The default preset is the paper's: z+ everywhere."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vital.errors import VitalError, closest

RULES = ("z+", "epsilon")  # z+: positive contributions only (the paper's); epsilon: every contribution, bias too
LAYER_TYPES = ("Conv2d", "Linear")  # the weighted layers whose rule can be chosen (their subclasses follow them)
PRESETS: dict[str, dict[str, str]] = {
    "zplus": {"Conv2d": "z+", "Linear": "z+"},  # the paper's and the authors' code (the default)
    "epsilon-plus": {"Conv2d": "z+", "Linear": "epsilon"},  # zennit's EpsilonPlus
    "epsilon": {"Conv2d": "epsilon", "Linear": "epsilon"},
}
DEFAULT_PRESET = "zplus"


def resolve_rules(rules: str | Mapping[str, str] | None) -> dict[str, str]:
    """The full {layer type: rule} map of a preset name or of a partial map (the default preset fills the rest);
    anything else is one line naming the valid presets, layer types or rules."""
    if rules is None:
        return dict(PRESETS[DEFAULT_PRESET])
    if isinstance(rules, str):
        if rules not in PRESETS:
            raise VitalError(f"unknown relevance rules preset '{rules}'.{closest(rules, PRESETS)} "
                             f"Presets: {', '.join(PRESETS)}")
        return dict(PRESETS[rules])
    if not isinstance(rules, Mapping):
        raise VitalError(f"relevance_rules must be a preset name ({', '.join(PRESETS)}) or a {{layer type: rule}} "
                         f"map, got {type(rules).__name__}")
    out = dict(PRESETS[DEFAULT_PRESET])
    for layer_type, rule in rules.items():
        _check(layer_type, rule)
        out[layer_type] = rule
    return out


def _check(layer_type: Any, rule: Any) -> None:
    if layer_type not in LAYER_TYPES:
        raise VitalError(f"relevance_rules: no rule can be chosen for layer type {layer_type!r}; "
                         f"the types are {', '.join(LAYER_TYPES)}")
    if rule not in RULES:
        raise VitalError(f"relevance_rules: unknown rule {rule!r} for {layer_type}; the rules are {', '.join(RULES)}")


def is_default(rules: str | Mapping[str, str] | None) -> bool:
    return resolve_rules(rules) == PRESETS[DEFAULT_PRESET]
