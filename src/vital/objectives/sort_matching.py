"""Sort-matching (SPEC section 2): per channel, the 1-D Wasserstein-2 distance between the synthetic feature values
over positions and the barycenter (averaged quantiles) of the references' values.

Sorting the synthetic values and comparing them with the sorted prototype, position by position in sorted order, is
the same sum as gathering the prototype at each value's rank, and torch.sort's backward routes the gradient to the
original positions with the permutation held constant, which is the rank-as-constant rule of the paper.
"""

from __future__ import annotations

import torch


def quantile_prototype(ref: torch.Tensor) -> torch.Tensor:
    """(N, C, P) reference features -> (C, P): each reference sorted per channel, then averaged over N."""
    return ref.sort(dim=-1).values.mean(dim=0)


class PrototypeAccumulator:
    """Running sum of sorted reference features, so references can be encoded in chunks (memory ~ one chunk)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, ref: torch.Tensor) -> None:
        s = ref.sort(dim=-1).values.sum(dim=0)
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
    if s.shape[-1] != q.shape[-1]:
        raise ValueError(f"synthetic and reference features differ in positions: {s.shape[-1]} vs {q.shape[-1]}; "
                         "the references must be encoded at the same resolution")
    err = (s.sort(dim=-1).values - q).square()
    if channel_weights is not None:
        err = err * channel_weights.unsqueeze(-1)
    return err.mean(dim=(1, 2))
