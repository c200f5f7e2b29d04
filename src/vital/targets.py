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


def _whole(name: str, value: object) -> int:
    """A whole number (an int or a numpy integer; not a bool, not '3'): the constructors' one rule for indices."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise VitalError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def _layer(value: object) -> None:
    if not isinstance(value, str) or not value:
        raise VitalError(f"layer must be a dotted layer name such as 'layer4.2', got {value!r}")


@dataclass(frozen=True)
class Class:
    """Class neuron k. For VITAL the class enters only through its reference images (arXiv 2503.22399, method section; docs/concepts/sort-matching.md)."""

    index: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", _whole("class index", self.index))

    def __str__(self) -> str:
        return f"class{self.index}"

    def slug(self) -> str:
        return f"class{self.index:04d}"


@dataclass(frozen=True)
class Channel:
    """Channel `channel` of the layer named by its dotted module path: its whole map, or the one unit at
    `position` (y, x) of the map (a token's grid cell for a ViT)."""

    layer: str
    channel: int
    position: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        _layer(self.layer)
        object.__setattr__(self, "channel", _whole("channel", self.channel))
        if self.position is not None:
            pos = tuple(self.position)
            if len(pos) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pos):
                raise VitalError(f"position must be (y, x) with whole numbers >= 0, got {self.position!r}")
            object.__setattr__(self, "position", pos)

    def __str__(self) -> str:
        at = f"@{self.position[0]},{self.position[1]}" if self.position is not None else ""
        return f"{self.layer}:{self.channel}{at}"

    def slug(self) -> str:
        at = f"_y{self.position[0]}x{self.position[1]}" if self.position is not None else ""
        return f"{safe_name(self.layer)}_ch{self.channel:04d}{at}"


@dataclass(frozen=True)
class Direction:
    """A direction in a layer's channel space: the linear readout sum_c v_c a_c at every position. `name` labels
    it (e.g. the file and row it came from)."""

    layer: str
    vector: tuple[float, ...]
    name: str = ""

    def __post_init__(self) -> None:
        import math

        _layer(self.layer)
        try:
            vec = tuple(float(v) for v in self.vector)
        except (TypeError, ValueError) as e:
            raise VitalError(f"a direction must be a sequence of numbers, got {self.vector!r}") from e
        if not vec or not all(math.isfinite(v) for v in vec) or not any(vec):
            raise VitalError("a direction must be a non-zero vector of finite numbers")
        object.__setattr__(self, "vector", vec)

    def __str__(self) -> str:
        return f"{self.layer}:direction" + (f"({self.name})" if self.name else "")

    def slug(self) -> str:
        digest = hashlib.sha1(repr(self.vector).encode()).hexdigest()[:8]  # distinct files for distinct vectors
        return f"{safe_name(self.layer)}_dir{digest}"


Target = Class | Channel | Direction


def parse_channels(spec: str, layer: str | None = None) -> list[Channel]:
    """The command line's channel form: 'layer4.2:1935' or 'layer4.2:0-3,7' (LAYER:CHANNELS), one unit at a
    position 'layer4.2:1935@3,4' (LAYER:CHANNEL@Y,X), or bare channels ('5', '0-3,7', '5@3,4') of `layer`."""
    spec, at, where = spec.partition("@")
    position = None
    if at:
        try:
            y, x = (int(v) for v in where.split(","))
        except ValueError as e:
            raise VitalError(f"cannot read '@{where}' as a position @Y,X (e.g. layer4.2:5@3,4)") from e
        position = (y, x)
    name, sep, channels = spec.rpartition(":")
    if sep and not name.strip():
        raise VitalError(f"cannot read '{spec}' as layer:channel (e.g. layer4.2:1935)")
    if not sep:
        if not layer:
            raise VitalError(f"channel '{spec}' has no layer: write LAYER:{spec} (e.g. layer4.2:{spec}) or pass "
                             "--layer")
        name, channels = layer, spec
    out = [Channel(name.strip(), c, position) for c in parse_range(channels)]
    if not out:
        raise VitalError(f"no channel in '{spec}'; write layer:channel (e.g. layer4.2:1935)")
    if position is not None and len(out) > 1:
        raise VitalError(f"a position picks one unit: write one channel before @ ({spec}@{where})")
    return out


def load_directions(path: str, layer: str) -> list[Direction]:
    """Directions of `layer` from a .npy or .pt file holding one vector (C,) or several rows (K, C)."""
    from pathlib import Path

    import numpy as np
    import torch

    p = Path(path)
    if not p.is_file():
        raise VitalError(f"direction file {p} does not exist")
    try:
        if p.suffix == ".npy":
            data = torch.from_numpy(np.load(p, allow_pickle=False))
        elif p.suffix in (".pt", ".pth"):
            data = torch.load(p, map_location="cpu", weights_only=True)
        else:
            raise VitalError(f"direction file {p} must be .npy or .pt")
    except VitalError:
        raise
    except Exception as e:
        raise VitalError(f"cannot read direction file {p} ({type(e).__name__}); save a (C,) or (K, C) array") from e
    if not torch.is_tensor(data) or data.dim() not in (1, 2) or not data.is_floating_point():
        raise VitalError(f"direction file {p} must hold a float array of shape (C,) or (K, C)")
    rows = data.reshape(-1, data.shape[-1]).double().tolist()
    return [Direction(layer, tuple(r), f"{p.stem}#{i}") for i, r in enumerate(rows)]


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
