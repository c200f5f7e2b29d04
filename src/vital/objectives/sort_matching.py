"""Sort-matching (SPEC section 2): per channel, the 1-D Wasserstein-2 distance between the synthetic feature values
over positions and the barycenter (averaged quantiles) of the references' values.

Sorting the synthetic values and comparing them with the sorted prototype, position by position in sorted order, is
the same sum as gathering the prototype at each value's rank, and the backward of the sort routes the gradient to
the original positions with the permutation held constant, which is the rank-as-constant rule of the paper.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch

PARALLEL_MIN_ELEMENTS = 1 << 16  # below this a thread hand-off costs more than it saves


@lru_cache(maxsize=1)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vital-sort")


def _argsort_rows(a: np.ndarray) -> np.ndarray:
    """np.argsort along the last axis, rows split over torch's CPU threads (numpy releases the GIL while sorting):
    the sort runs between the forward and the backward, when those cores are otherwise idle."""
    workers = torch.get_num_threads()
    if workers < 2 or a.size < PARALLEL_MIN_ELEMENTS:
        return np.argsort(a, axis=-1)
    rows = a.reshape(-1, a.shape[-1])
    bounds = np.linspace(0, rows.shape[0], min(workers, rows.shape[0]) + 1).astype(int)
    parts = _pool(workers).map(lambda se: np.argsort(rows[se[0]:se[1]], axis=-1), zip(bounds[:-1], bounds[1:], strict=True))
    return np.concatenate(list(parts)).reshape(a.shape)


def sort_last(x: torch.Tensor) -> torch.Tensor:
    """`x` sorted along its last dimension, differentiable (the gradient goes back to each value's position).

    On the CPU the permutation comes from numpy's vectorised argsort, several times faster than torch.sort there
    (bench/step_time.py); the values are then gathered in torch, whose backward scatters the gradient exactly as
    torch.sort's does. Elsewhere (CUDA, MPS) torch.sort is used."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        order = _argsort_rows(x.detach().contiguous().numpy())
        return torch.gather(x, -1, torch.from_numpy(order))
    return x.sort(dim=-1).values


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


def sort_matching_loss(s: torch.Tensor, q: torch.Tensor, channel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample loss, shape (B,).

    s: synthetic features (B, C, P); q: sorted prototypes (B, C, P) or (C, P), one per sample;
    channel_weights: optional (B, C) weights w_c (relevance importance); the loss is (1/CP) sum_c w_c sum_p E[c, p]."""
    return sorted_matching_loss(sort_last(s), q, channel_weights)


def sorted_matching_loss(s_sorted: torch.Tensor, q: torch.Tensor,
                         channel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """`sort_matching_loss` of features already sorted by `sort_last`: one sort serves several prototypes."""
    if s_sorted.shape[-1] != q.shape[-1]:
        raise ValueError(f"synthetic and reference features differ in positions: {s_sorted.shape[-1]} vs "
                         f"{q.shape[-1]}; the references must be encoded at the same resolution")
    err = (s_sorted - q).square()
    if channel_weights is not None:
        err = err * channel_weights.unsqueeze(-1)
    return err.mean(dim=(1, 2))
