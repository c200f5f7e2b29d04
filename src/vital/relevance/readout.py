"""Which unit of the target layer a relevance pass starts from, one per sample: a channel, a channel at one position
(y, x) of the layer's map, or a direction (a vector over the channels: the linear readout sum_c v_c a_c).

The start relevance is the unit's own positive evidence, computed on the (B, C, P) positions view and put back in
the layer's layout:
- "lrp": R[c, p] = v_c a[c, p] where the readout y_p = sum_c v_c a[c, p] is positive (the z-rule through the
  readout; a channel is the one-hot v, so R = a[c, p] where a[c, p] > 0), kept where positive, at every position
  or at the chosen one;
- "lrp-restricted": only at the position where the readout is most aligned with the activation vector,
  y_p / ||a[:, p]|| (or the chosen one): a channel gets 1 there, a direction its positive contributions normalised
  to sum 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vital.errors import VitalError
from vital.layout import Layout, channel_count, to_positions, token_grid
from vital.targets import Channel, Direction, Target


@dataclass
class Readout:
    """One unit per sample: `channels` (B,) long, or `vectors` (B, C); `positions` (B, 2) long as (y, x), with -1
    for "every position"."""

    channels: torch.Tensor | None = None
    vectors: torch.Tensor | None = None
    positions: torch.Tensor | None = None

    @property
    def _ref(self) -> torch.Tensor:
        ref = self.channels if self.channels is not None else self.vectors
        assert ref is not None, "a readout needs channels or vectors"
        return ref

    @property
    def batch(self) -> int:
        return self._ref.shape[0]

    @property
    def batch_device(self) -> torch.device:
        return self._ref.device

    @classmethod
    def from_targets(cls, targets: Sequence[Target], device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> Readout:
        """One unit per target: Channel targets give channels (with positions where any target has one; -1 for
        "every position"), Direction targets give vectors in `dtype`. The units are checked against a layer by
        `check`, once its output is known."""
        if targets and all(isinstance(t, Channel) for t in targets):
            channels = [t.channel for t in targets if isinstance(t, Channel)]
            positions = [t.position for t in targets if isinstance(t, Channel)]
            at = None
            if any(p is not None for p in positions):
                at = torch.tensor([p or (-1, -1) for p in positions], device=device)
            return cls(channels=torch.tensor(channels, device=device), positions=at)
        if targets and all(isinstance(t, Direction) for t in targets):
            vectors = [t.vector for t in targets if isinstance(t, Direction)]
            if len({len(v) for v in vectors}) != 1:
                raise VitalError(f"directions of one batch must have one length, got {sorted({len(v) for v in vectors})}")
            return cls(vectors=torch.tensor(vectors, device=device, dtype=dtype))
        raise VitalError("a batch of units holds only Channel or only Direction targets; run them separately")

    def expand(self, rows: torch.Tensor) -> Readout:
        """The readout of the given sample rows (views of the same target repeat its row)."""
        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[rows]

        return Readout(pick(self.channels), pick(self.vectors), pick(self.positions))


def as_readout(units: Readout | torch.Tensor | int, batch: int, device: torch.device) -> Readout:
    """A readout for `batch` samples from a Readout, one channel (int) for all, or one channel per sample."""
    if isinstance(units, Readout):
        r = units
    elif isinstance(units, int):
        r = Readout(channels=torch.full((batch,), units, dtype=torch.long, device=device))
    elif torch.is_tensor(units) and not units.is_floating_point() and not units.is_complex():
        ch = units.reshape(-1).long()
        r = Readout(channels=ch.expand(batch) if ch.numel() == 1 else ch)
    else:
        raise VitalError("channels must be an int or an integer tensor with one channel per sample")
    if r.batch != batch:
        raise VitalError(f"got {r.batch} channels for a batch of {batch}; give one channel per sample")
    def move(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device)

    return Readout(move(r.channels), move(r.vectors), move(r.positions))


def cnn_layout(a: torch.Tensor) -> Layout:
    """The layout of a CNN output, as the rule chain and guided backprop read it: a vector after the pooling, else a
    channels-first map."""
    return Layout.VECTOR if a.dim() == 2 else Layout.CHANNELS_FIRST


def check_target(readout: Readout, a: torch.Tensor, layout: Layout, layer: str) -> None:
    """The units against the target layer's output `a`: a map, a token sequence or a vector (see `check`)."""
    if a.dim() not in (2, 3, 4):
        raise VitalError(f"target layer '{layer}' has output shape {tuple(a.shape)}; relevance needs a map, a token "
                         "sequence or a vector")
    check(readout, tuple(a.shape), layout, layer)


def grid_shape(shape: tuple[int, ...], layout: Layout) -> tuple[int, int, int]:
    """(prefix positions, H, W) of an output: where (y, x) falls in the positions view."""
    if layout is Layout.CHANNELS_FIRST and len(shape) == 4:
        return 0, shape[2], shape[3]
    if layout is Layout.CHANNELS_LAST:
        return 0, shape[1], shape[2]
    if layout is Layout.TOKENS:
        prefix, side = token_grid(shape[1])
        return prefix, side, side
    return 0, 1, 1


def check(readout: Readout, shape: tuple[int, ...], layout: Layout, layer: str) -> None:
    """Channels, vector lengths and positions against the target layer's output."""
    c = channel_count(shape, layout)
    if readout.channels is not None:
        lo, hi = int(readout.channels.min()), int(readout.channels.max())
        if lo < 0 or hi >= c:
            raise VitalError(f"channel {lo if lo < 0 else hi} is out of range for layer '{layer}', which has {c} "
                             f"channels (0..{c - 1})")
    if readout.vectors is not None and readout.vectors.shape[1] != c:
        raise VitalError(f"direction has {readout.vectors.shape[1]} components but layer '{layer}' has {c} channels")
    if readout.positions is not None:
        _, h, w = grid_shape(shape, layout)
        for y, x in readout.positions.tolist():
            if (y, x) != (-1, -1) and not (0 <= y < h and 0 <= x < w):
                raise VitalError(f"position ({y}, {x}) is outside layer '{layer}''s {h}x{w} map")


def _weights(readout: Readout, channels: int, like: torch.Tensor) -> torch.Tensor:
    """(B, C): the readout's vector (a one-hot for a channel)."""
    if readout.vectors is not None:
        return readout.vectors.to(like.dtype)
    assert readout.channels is not None
    w = torch.zeros(readout.batch, channels, dtype=like.dtype, device=like.device)
    w[torch.arange(readout.batch, device=like.device), readout.channels] = 1.0
    return w


def values(a: torch.Tensor, readout: Readout, layout: Layout) -> torch.Tensor:
    """(B, P) readout y_p of an output in `layout` (the quantity a guided gradient or an objective reads)."""
    pos = to_positions(a, layout)
    return torch.einsum("bcp,bc->bp", pos, _weights(readout, pos.shape[1], pos))


def mean_value(pos: torch.Tensor, readout: Readout, shape: tuple[int, ...], layout: Layout) -> torch.Tensor:
    """(B,) the readout of positions-view features `pos` (B, C, P), averaged over its positions (every one, or the
    chosen one); `shape` and `layout` are those of the layer's own output. What an activation objective maximises."""
    v = torch.einsum("bcp,bc->bp", pos, _weights(readout, pos.shape[1], pos))
    mask = position_mask(readout, shape, layout, v.shape[1], pos.device)
    return v.mean(1) if mask is None else (v * mask).sum(1) / mask.sum(1)


def position_mask(readout: Readout, shape: tuple[int, ...], layout: Layout, p: int, device) -> torch.Tensor | None:
    """(B, P) mask of the chosen positions (None: every position)."""
    if readout.positions is None:
        return None
    prefix, _, w = grid_shape(shape, layout)
    mask = torch.zeros(readout.batch, p, dtype=torch.bool, device=device)
    for b, (y, x) in enumerate(readout.positions.tolist()):
        if (y, x) == (-1, -1):
            mask[b] = True
        else:
            mask[b, prefix + y * w + x] = True
    return mask


def start(a: torch.Tensor, readout: Readout, layout: Layout, method: str) -> torch.Tensor:
    """The start relevance at the target output `a` (its own shape), see the module docstring."""
    pos = to_positions(a, layout)  # (B, C, P)
    w = _weights(readout, pos.shape[1], pos)
    contrib = pos * w[:, :, None]
    y = contrib.sum(1)  # (B, P)
    mask = position_mask(readout, tuple(a.shape), layout, pos.shape[2], a.device)
    if method == "lrp":
        r = contrib.clamp(min=0) * (y > 0)[:, None]
        if mask is not None:
            r = r * mask[:, None]
    else:
        if mask is not None and not bool(mask.all(1).any()):
            chosen = mask.float().argmax(1)
        else:
            cos = y / (pos.norm(dim=1) + torch.finfo(a.dtype).tiny)
            chosen = cos.argmax(1)
        idx = torch.arange(a.shape[0], device=a.device)
        at = contrib[idx, :, chosen].clamp(min=0)  # (B, C)
        if readout.channels is not None:
            at = w  # a channel gets 1 at its position
        else:
            at = at / at.sum(1, keepdim=True).clamp(min=torch.finfo(a.dtype).tiny)
        r = torch.zeros_like(pos)
        r[idx, :, chosen] = at
    return from_positions(r, layout, tuple(a.shape))


def from_positions(r: torch.Tensor, layout: Layout, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of `to_positions`: (B, C, P) back to an output of `shape` in `layout`."""
    if layout is Layout.CHANNELS_FIRST:
        return r.reshape(shape)
    if layout is Layout.CHANNELS_LAST:
        return r.transpose(1, 2).reshape(shape)
    if layout is Layout.TOKENS:
        return r.transpose(1, 2).contiguous()
    return r.squeeze(-1)
