"""Sort-matching (arXiv 2503.22399, method section; docs/concepts/sort-matching.md): per channel, the 1-D Wasserstein-2 distance between the synthetic feature values
over positions and the barycenter (averaged quantiles) of the references' values.

With rank(i) the rank of value i among its channel's positions and q the sorted prototype, the loss of a channel is
mean_i (x_i - q[rank(i)])^2 and, the ranks held constant (the paper's rule), its gradient is 2 (x_i - q[rank(i)]) / P.
Both come from one pass: the stable permutation of each row, the prototype scattered to the positions it is matched
with, and the residual, which is the loss's terms and, scaled, its gradient. `sort_matching_loss` computes them in
its forward and hands the stored gradient back in its backward, so no sort, gather or scatter enters the autograd
graph; one sort serves every prototype a layer is matched against (VITAL's relevance-weighted and plain ones).

Ties (exact zeros after a ReLU, values clamped by ReLU6) are broken by position, as a stable sort does: the loss does
not depend on how ties are broken, and the gradient is then exactly that of `torch.sort(stable=True)` (tested).

On the CPU the permutation comes from sorting 64-bit keys that hold the value's bits, mapped to integers of the same
order, above its position: numpy's vectorised sort of such keys is several times faster than an argsort (which ties
slow down further), and the position breaks ties for free. The rows are split over torch's CPU threads (numpy
releases the GIL). Elsewhere (CUDA, MPS, float64) the same pass runs in torch with `torch.sort(stable=True)`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

PARALLEL_MIN_ELEMENTS = 1 << 16  # below this a thread hand-off costs more than it saves
_LOW_WORD = 0 if sys.byteorder == "little" else 1  # where a 64-bit key's low 32 bits (the position) sit


@dataclass(frozen=True)
class Prototype:
    """One target of sort-matching: sorted prototype q, (B, C, P) or (C, P); optional per-sample channel weights
    (B, C); and a factor on this term's loss."""

    q: torch.Tensor
    channel_weights: torch.Tensor | None = None
    scale: float = 1.0


@lru_cache(maxsize=1)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vital-sort")


def _workers(size: int) -> int:
    workers = torch.get_num_threads()
    return 1 if workers < 2 or size < PARALLEL_MIN_ELEMENTS else workers


def _order_keys(x: np.ndarray) -> np.ndarray:
    """float32 (..., P) -> int64 keys (value's order-preserving integer << 32) | position; sorting them sorts the
    values stably. -0.0 becomes +0.0 first (they compare equal, so they must tie)."""
    bits = np.add(x, np.float32(0)).view(np.int32)
    bits ^= (bits >> 31) & np.int32(0x7FFFFFFF)  # negative floats: reverse their order below the positives
    keys = bits.astype(np.int64)
    keys <<= 32
    keys |= np.arange(x.shape[-1], dtype=np.int64)
    return keys


def _permutation_numpy(x: np.ndarray) -> np.ndarray:
    """Stable argsort of float32 rows along the last axis, as int32 positions (a strided view into the keys)."""
    keys = _order_keys(x)
    keys.sort(axis=-1)
    return keys.view(np.int32)[..., _LOW_WORD::2]


def _in_blocks(fn, channels: int, size: int) -> list:
    """fn(slice) over channel blocks, one per CPU thread torch uses (one block for small inputs), on the pool."""
    workers = min(_workers(size), channels)
    bounds = np.linspace(0, channels, workers + 1).astype(int)
    blocks = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if workers == 1:
        return [fn(blocks[0])]
    return list(_pool(torch.get_num_threads()).map(fn, blocks))


def sort_last(x: torch.Tensor) -> torch.Tensor:
    """`x` sorted along its last dimension, differentiable (the gradient goes back to each value's position; ties
    in position order, as a stable sort)."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return x.sort(dim=-1, stable=True).values
    rows = x.detach().contiguous().numpy().reshape(-1, x.shape[-1])
    if not x.requires_grad:  # values only: no positions to carry
        parts = _in_blocks(lambda s: np.sort(rows[s], axis=-1), rows.shape[0], rows.size)
        return torch.from_numpy(np.concatenate(parts)).view(x.shape)
    parts = _in_blocks(lambda s: _permutation_numpy(rows[s]).astype(np.int64), rows.shape[0], rows.size)
    return torch.gather(x, -1, torch.from_numpy(np.concatenate(parts)).view(x.shape))


def quantile_prototype(ref: torch.Tensor) -> torch.Tensor:
    """(N, C, P) reference features -> (C, P): each reference sorted per channel, then averaged over N."""
    return sort_last(ref).mean(dim=0)


def weighted_quantiles(values: torch.Tensor, weights: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Quantile function of the weighted empirical distribution of each row, at the `n` levels (k + 1/2) / n.

    values, weights: (..., P) with weights >= 0; returns (..., n), ascending (n defaults to P). The value at level u
    is the smallest value whose cumulative weight reaches u of the row's total weight; a row whose weights are all
    zero counts every value equally. With equal weights this is exactly `sort_last(values)`."""
    n = values.shape[-1] if n is None else n
    order = values.argsort(dim=-1)
    v = values.gather(-1, order)
    w = weights.to(values.dtype).gather(-1, order)
    w = torch.where(w.sum(-1, keepdim=True) > 0, w, torch.ones_like(w))
    cum = w.cumsum(-1)
    levels = (torch.arange(n, device=values.device, dtype=values.dtype) + 0.5) / n * cum[..., -1:]
    index = torch.searchsorted(cum.contiguous(), levels.contiguous()).clamp(max=values.shape[-1] - 1)
    return v.gather(-1, index)


class PrototypeAccumulator:
    """Running sum of sorted reference features, so references can be encoded in chunks (memory ~ one chunk).
    With `weights`, each reference's values enter by their weighted quantiles (`weighted_quantiles`)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, ref: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        s = (sort_last(ref) if weights is None else weighted_quantiles(ref, weights)).sum(dim=0)
        self.total = s if self.total is None else self.total + s
        self.count += ref.shape[0]

    def prototype(self) -> torch.Tensor:
        if self.total is None:
            raise ValueError("no reference features were added")
        return self.total / self.count


# ---- the loss -----------------------------------------------------------------------------------------------------

def _residual_pass_numpy(x: np.ndarray, targets: list[tuple[np.ndarray, np.ndarray | None, float]], grad: bool
                         ) -> tuple[list[np.ndarray], np.ndarray | None]:
    """x (B, c, P), a block of channels; per target: q (B or 1, c, P), weights (B, c) or None, scale (the factor
    included). Returns per target the row sums of squared residuals (B, c), and, with `grad`,
    sum_k 2 scale_k w_k residual_k."""
    perm = _permutation_numpy(x)
    rows, g = [], None
    for q, w, scale in targets:
        at_rank = np.empty_like(x)
        np.put_along_axis(at_rank, perm, np.broadcast_to(q, x.shape), axis=-1)
        residual = np.subtract(x, at_rank, out=at_rank)
        rows.append(np.einsum("bcp,bcp->bc", residual, residual))
        if grad:
            residual *= np.float32(2 * scale) if w is None else (np.float32(2 * scale) * w)[..., None]
            g = residual if g is None else np.add(g, residual, out=g)
    return rows, g


def _residual_pass_torch(x: torch.Tensor, targets: Sequence[Prototype], grad: bool, factor: float
                         ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """The same pass in torch, for any device and dtype (half-precision features are matched in float32)."""
    dtype = x.dtype
    x = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    perm = x.sort(dim=-1, stable=True).indices
    rows, g = [], None
    for t in targets:
        residual = x - torch.empty_like(x).scatter_(-1, perm, t.q.to(x.dtype).expand_as(x))
        rows.append(residual.square().sum(-1))
        if grad:
            c = 2 * t.scale * factor
            term = residual * (c if t.channel_weights is None else c * t.channel_weights.to(x.dtype)[..., None])
            g = term if g is None else g + term
    return rows, None if g is None else g.to(dtype)


def _residual_pass(x: torch.Tensor, targets: Sequence[Prototype], grad: bool, factor: float
                   ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Row sums of squared residuals (B, C) per target and `factor` times the gradient of their weighted sum
    sum_k scale_k sum_c w_kc rows_kc, (B, C, P) (None without grad)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.shape[-1] >= 2**31:
        return _residual_pass_torch(x, targets, grad, factor)
    xn = x.contiguous().numpy()
    qn = [t.q.to(torch.float32).contiguous().numpy() for t in targets]
    qn = [q if q.ndim == 3 else q[None] for q in qn]
    wn = [None if t.channel_weights is None else t.channel_weights.to(torch.float32).contiguous().numpy()
          for t in targets]

    def block(s: slice):
        return _residual_pass_numpy(xn[:, s], [(q[:, s], None if w is None else w[:, s], t.scale * factor)
                                               for q, w, t in zip(qn, wn, targets, strict=True)], grad)

    parts = _in_blocks(block, x.shape[1], x.numel())

    def joined(arrays: list) -> torch.Tensor:
        return torch.from_numpy(arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=1))

    rows = [joined([p[0][k] for p in parts]) for k in range(len(targets))]
    return rows, joined([p[1] for p in parts]) if grad else None


class _SortMatching(torch.autograd.Function):
    """Forward: the per-sample loss, with its gradient computed in the same pass; backward: that gradient, scaled
    by the incoming one. On the CPU the scaling is skipped when the incoming gradient is 1 (the loop's loss.sum());
    elsewhere that test would wait for the device at every layer of every step, so it always scales."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, targets: Sequence[Prototype]) -> torch.Tensor:
        grad = ctx.needs_input_grad[0]
        n = x.shape[1] * x.shape[2]
        rows, g = _residual_pass(x.detach(), targets, grad, 1 / n)
        loss = torch.zeros(x.shape[0], dtype=rows[0].dtype, device=x.device)
        for t, r in zip(targets, rows, strict=True):
            r = r if t.channel_weights is None else r * t.channel_weights.to(r.dtype)
            loss = loss + t.scale * r.sum(dim=1) / n
        if grad:
            ctx.save_for_backward(g)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        (g,) = ctx.saved_tensors
        if g.device.type == "cpu" and bool((grad_loss == 1).all()):
            return g, None
        return g * grad_loss.view(-1, 1, 1), None


def _check(x: torch.Tensor, t: Prototype) -> None:
    if x.shape[-1] != t.q.shape[-1]:
        raise ValueError(f"synthetic and reference features differ in positions: {x.shape[-1]} vs "
                         f"{t.q.shape[-1]}; the references must be encoded at the same resolution")
    if t.q.shape[-2] != x.shape[1] or (t.q.dim() == 3 and t.q.shape[0] != x.shape[0]):
        raise ValueError(f"prototype of shape {tuple(t.q.shape)} does not fit features of shape {tuple(x.shape)}")


def sort_matching_losses(x: torch.Tensor, targets: Sequence[Prototype]) -> torch.Tensor:
    """Per-sample loss (B,) of features x (B, C, P) against several prototypes with one sort:
    sum_k scale_k * (1 / CP) * sum_c w_kc * sum_p (x[c, p] - q_k[c, rank(p)])^2, ranks held constant."""
    for t in targets:
        _check(x, t)
    return _SortMatching.apply(x, list(targets))


def sort_matching_loss(s: torch.Tensor, q: torch.Tensor, channel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample loss, shape (B,).

    s: synthetic features (B, C, P); q: sorted prototypes (B, C, P) or (C, P), one per sample;
    channel_weights: optional (B, C) weights w_c (relevance importance); the loss is (1/CP) sum_c w_c sum_p E[c, p]."""
    return sort_matching_losses(s, [Prototype(q, channel_weights)])
