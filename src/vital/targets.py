"""What to visualise: a class logit, a channel of a layer, or a direction in a layer's channel space."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from vital.errors import VitalError


def safe_name(text: str) -> str:
    """A file-name part made from a layer name: letters, digits, '_' and '-' only, so that no name (one holding
    '/', '..' or a NUL) can write outside the output folder."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "_"


@dataclass(frozen=True)
class Class:
    """Class neuron k. For VITAL the class enters only through its reference images (SPEC section 3)."""

    index: int

    def __str__(self) -> str:
        return f"class{self.index}"

    def slug(self) -> str:
        return f"class{self.index:04d}"


@dataclass(frozen=True)
class Channel:
    """Channel `channel` of the layer named by its dotted module path (whole spatial map)."""

    layer: str
    channel: int

    def __str__(self) -> str:
        return f"{self.layer}:{self.channel}"

    def slug(self) -> str:
        return f"{safe_name(self.layer)}_ch{self.channel:04d}"


@dataclass(frozen=True)
class Direction:
    """A direction in a layer's channel space (activation objectives only)."""

    layer: str
    vector: tuple[float, ...]

    def __str__(self) -> str:
        return f"{self.layer}:direction"

    def slug(self) -> str:
        digest = hashlib.sha1(repr(self.vector).encode()).hexdigest()[:8]  # distinct files for distinct vectors
        return f"{safe_name(self.layer)}_dir{digest}"


Target = Class | Channel | Direction


def parse_channels(spec: str, layer: str | None = None) -> list[Channel]:
    """The command line's channel form: 'layer4.2:1935' or 'layer4.2:0-3,7' (LAYER:CHANNELS), or bare channels
    ('5', '0-3,7') of `layer`."""
    name, sep, channels = spec.rpartition(":")
    if sep and not name.strip():
        raise VitalError(f"cannot read '{spec}' as layer:channel (e.g. layer4.2:1935)")
    if not sep:
        if not layer:
            raise VitalError(f"channel '{spec}' has no layer: write LAYER:{spec} (e.g. layer4.2:{spec}) or pass "
                             "--layer")
        name, channels = layer, spec
    out = [Channel(name.strip(), c) for c in parse_range(channels)]
    if not out:
        raise VitalError(f"no channel in '{spec}'; write layer:channel (e.g. layer4.2:1935)")
    return out


def parse_names(spec: str) -> list[str]:
    """'layer1, layer2,' -> ['layer1', 'layer2']: a comma-separated list of names (layers, methods, models)."""
    return [v.strip() for v in spec.split(",") if v.strip()]


MAX_INDICES = 100_000  # in one list of indices: more than any layer has channels or any classifier has classes


def parse_range(spec: str, limit: int = MAX_INDICES) -> list[int]:
    """'1,5,10-12' -> [1, 5, 10, 11, 12]. A range is checked before it is expanded: at most `limit` indices in all,
    and a range must not run backwards."""
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError as e:
            raise VitalError(f"cannot read '{part}' as an index or a range a-b of non-negative whole numbers") from e
        if b < a:
            raise VitalError(f"range '{part}' runs backwards; write {b}-{a}")
        if len(out) + b - a + 1 > limit:
            raise VitalError(f"'{spec}' holds more than {limit} indices; no model has that many classes or channels")
        out.extend(range(a, b + 1))
    return out
