"""One validation layer for numbers and choices, shared by the CLI, the Python API, run records and job files: each
option dataclass checks itself in `__post_init__` with these helpers, so a value is checked the same way wherever it
comes from. Every failure is a one-line `VitalError` naming the option, the value and the valid range."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from vital.errors import VitalError

LR_MAX = 10.0  # ten times the largest default step (VITAL's pixel lr 1.0): above it every step jumps across the image


def integer(name: str, value: Any, low: int | None = None, high: int | None = None, optional: bool = True) -> None:
    """`value` is an int (not a bool, not a float such as 282.7) within [low, high]; None passes when `optional`."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise VitalError(f"{name} must be a whole number, got {value!r}")
    if low is not None and value < low:
        raise VitalError(f"{name} must be at least {low}, got {value}")
    if high is not None and value > high:
        raise VitalError(f"{name} must be at most {high}, got {value}")


def number(name: str, value: Any, low: float | None = None, high: float | None = None, *, positive: bool = False,
           optional: bool = True) -> None:
    """`value` is a finite real number (not a bool) within [low, high] (above 0 with `positive`)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise VitalError(f"{name} must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise VitalError(f"{name} must be above 0, got {value}")
    if low is not None and value < low:
        raise VitalError(f"{name} must be at least {low}, got {value}")
    if high is not None and value > high:
        raise VitalError(f"{name} must be at most {high}, got {value}")


def numbers(name: str, values: Sequence[Any] | None, low: float | None = None) -> None:
    if values is None:
        return
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise VitalError(f"{name} must be a list of numbers, got {values!r}")
    for v in values:
        number(name, v, low, optional=False)


def names(name: str, values: Sequence[Any] | None) -> None:
    if values is None:
        return
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not all(
            isinstance(v, str) and v for v in values):
        raise VitalError(f"{name} must be a list of names, got {values!r}")


def choice(name: str, value: Any, choices: Sequence[str], optional: bool = True) -> None:
    if value is None and optional:
        return
    if value not in choices:
        raise VitalError(f"unknown {name} {value!r}; use one of {', '.join(choices)}")


def flag(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise VitalError(f"{name} must be true or false, got {value!r}")


def targets_fit(model: Any, targets: Sequence[Any]) -> None:
    """Every target against `model`, in one forward pass, before anything runs: a known layer that runs, a channel
    below the layer's channel count, a direction with one value per channel, a class below the class count."""
    import torch

    from vital.features import layer_table, resolve_modules
    from vital.targets import Channel, Class, Direction

    for t in targets:
        if isinstance(t, Class) and model.num_classes is not None and not 0 <= t.index < model.num_classes:
            raise VitalError(f"class {t.index} is out of range: {model.name} has {model.num_classes} classes "
                             f"(0-{model.num_classes - 1})")
    layered = [t for t in targets if isinstance(t, (Channel, Direction))]
    if not layered:
        return
    resolve_modules(model.module, sorted({t.layer for t in layered}))
    x = torch.zeros(1, 3, model.size, model.size, device=model.device, dtype=model.dtype)
    channels = {row.name: row.channels for row in layer_table(model.module, x)}
    for t in layered:
        if t.layer not in channels:
            raise VitalError(f"layer '{t.layer}' does not run in {model.name}'s forward pass; pick a layer it uses "
                             "(`vital layers MODEL`)")
        n = channels[t.layer]
        if isinstance(t, Channel) and not 0 <= t.channel < n:
            raise VitalError(f"channel {t.channel} is out of range: layer '{t.layer}' has {n} channels (0-{n - 1})")
        if isinstance(t, Direction) and len(t.vector) != n:
            raise VitalError(f"direction {t.name or ''} has {len(t.vector)} values but layer '{t.layer}' has {n} "
                             "channels: give one value per channel")
