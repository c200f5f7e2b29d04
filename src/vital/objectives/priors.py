"""Image priors (arXiv 2503.22399, method section), per sample of a batch so that batched runs equal single runs."""

from __future__ import annotations

from typing import cast

import torch

from vital.objectives.base import Term, Views


def _diffs(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Horizontal, vertical, anti-diagonal and diagonal neighbour differences of (B, C, H, W)."""
    return (
        x[:, :, :, :-1] - x[:, :, :, 1:],
        x[:, :, :-1, :] - x[:, :, 1:, :],
        x[:, :, 1:, :-1] - x[:, :, :-1, 1:],
        x[:, :, :-1, :-1] - x[:, :, 1:, 1:],
    )


def tv_l2(x: torch.Tensor) -> torch.Tensor:
    """Sum over the four directions of the (un-squared) Frobenius norm of the differences, per sample: (B,)."""
    return cast(torch.Tensor, sum(d.flatten(1).norm(dim=1) for d in _diffs(x)))


def tv_l1(x: torch.Tensor) -> torch.Tensor:
    """Sum over the four directions of the mean absolute difference, per sample: (B,)."""
    return cast(torch.Tensor, sum(d.abs().flatten(1).mean(dim=1) for d in _diffs(x)))


def l2_norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each sample: (B,)."""
    return x.flatten(1).norm(dim=1)


class Priors(Term):
    """tv_l2 * TV_l2 + tv_l1 * TV_l1 + l2 * L2 of the image the network sees (after jitter and flip, before any
    multi-crop augmentation); weights of 0 are skipped."""

    name = "priors"

    def __init__(self, tv_l2: float = 0.0, tv_l1: float = 0.0, l2: float = 0.0):
        self.tv_l2, self.tv_l1, self.l2 = float(tv_l2), float(tv_l1), float(l2)

    def __call__(self, v: Views) -> torch.Tensor:
        x = v.image
        total = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        if self.tv_l2:
            total = total + self.tv_l2 * tv_l2(x)
        if self.tv_l1:
            total = total + self.tv_l1 * tv_l1(x)
        if self.l2:
            total = total + self.l2 * l2_norm(x)
        return total

    def state(self) -> dict:
        return {"name": self.name, "tv_l2": self.tv_l2, "tv_l1": self.tv_l1, "l2": self.l2}
