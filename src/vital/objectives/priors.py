"""Image priors (SPEC section 1), per sample of a batch so that batched runs equal single runs."""

from __future__ import annotations

import torch


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
    return sum(d.flatten(1).norm(dim=1) for d in _diffs(x))


def tv_l1(x: torch.Tensor) -> torch.Tensor:
    """Sum over the four directions of the mean absolute difference, per sample: (B,)."""
    return sum(d.abs().flatten(1).mean(dim=1) for d in _diffs(x))


def l2_norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each sample: (B,)."""
    return x.flatten(1).norm(dim=1)
