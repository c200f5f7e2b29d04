"""Where the channels of a layer's output are: the feature layout, a property of each layer.

CNNs emit channels-first maps (B, C, H, W); Swin's stages and the inside of ConvNeXt's blocks emit channels-last
maps (B, H, W, C); a ViT emits tokens (B, T, D), T = prefix tokens (class, registers) + a square grid of patches;
a head emits vectors (B, C). Every path of vital reads a layer through one of two views made here:

- positions (B, C, P): what sort-matching, channel objectives and relevance weights use (all tokens, prefix too);
- map (B, C, H, W): what mining and receptive fields use (a token grid without its prefix tokens).

A layout is read off the output's shape and the input's size: in a square input, the two equal dimensions of a 4-D
output are the spatial ones. When all three are equal (56 channels at 56x56) the shape cannot tell, and the layer is
probed once at another input size: the dimensions that change are spatial (`vital.features.LayoutProbe`, cached
per module).
"""

from __future__ import annotations

import math
from enum import Enum

import torch

from vital.errors import VitalError


class Layout(str, Enum):
    CHANNELS_FIRST = "channels-first"
    CHANNELS_LAST = "channels-last"
    TOKENS = "tokens"
    VECTOR = "vector"


def from_shape(shape: tuple[int, ...]) -> Layout | None:
    """The layout of an output of `shape` (batch first) from a square input; None when a 4-D shape is ambiguous."""
    if len(shape) == 2:
        return Layout.VECTOR
    if len(shape) == 3:
        return Layout.TOKENS
    if len(shape) != 4:
        raise VitalError(f"cannot read a layer output of shape {tuple(shape)} as channels and positions")
    _, a, b, c = shape
    first, last = b == c, a == b
    if first and not last:
        return Layout.CHANNELS_FIRST
    if last and not first:
        return Layout.CHANNELS_LAST
    if not first and not last:
        return Layout.CHANNELS_FIRST  # a non-square input: the usual convention
    return None


def channel_dim(layout: Layout) -> int:
    return 1 if layout in (Layout.CHANNELS_FIRST, Layout.VECTOR) else -1


def channel_count(shape: tuple[int, ...], layout: Layout) -> int:
    """Channels of an output of `shape` (batch first): an embedding dimension for tokens."""
    return int(shape[channel_dim(layout)])


def token_grid(tokens: int) -> tuple[int, int]:
    """(prefix tokens, grid side) of a token sequence: the largest square grid that fits, the rest is prefix."""
    side = math.isqrt(tokens)
    return tokens - side * side, side


def to_positions(t: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(B, C, P) view of an output: channels by positions (every token, prefix included)."""
    if layout is Layout.CHANNELS_FIRST:
        return t.flatten(2)
    if layout is Layout.CHANNELS_LAST:
        return t.flatten(1, 2).transpose(1, 2)
    if layout is Layout.TOKENS:
        return t.transpose(1, 2)
    return t.unsqueeze(-1)


def to_map(t: torch.Tensor, layout: Layout, name: str = "layer") -> torch.Tensor:
    """(B, C, H, W) spatial view of an output; a token sequence loses its prefix tokens (they have no place)."""
    if layout is Layout.CHANNELS_FIRST:
        return t
    if layout is Layout.CHANNELS_LAST:
        return t.permute(0, 3, 1, 2)
    if layout is Layout.TOKENS:
        prefix, side = token_grid(t.shape[1])
        if side < 1:
            raise VitalError(f"'{name}' outputs {t.shape[1]} tokens: no grid of patches to place them on")
        return t[:, prefix:].transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)
    raise VitalError(f"'{name}' outputs vectors of shape {tuple(t.shape[1:])}, not a map: mining, receptive fields "
                     "and patches need a convolutional or token layer")
