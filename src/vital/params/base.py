"""The interface every parameterization implements; the loop knows nothing else about them."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class Parameterization(ABC):
    """Holds the optimised tensors of a batch of B images and renders them in the model's (normalised) input space.

    `image()` is differentiable with respect to `parameters()` (the loop reads the transparency map from its
    gradient). `after_step()` runs after each optimiser step (clipping, re-projection)."""

    def __init__(self, batch: int, size: int, lo: torch.Tensor, hi: torch.Tensor):
        self.batch, self.size = batch, size
        self.lo, self.hi = lo, hi  # per-channel valid pixel range in input space, (1, 3, 1, 1)

    @abstractmethod
    def parameters(self) -> list[torch.Tensor]: ...

    @abstractmethod
    def image(self) -> torch.Tensor:
        """(B, 3, size, size) in the model's input space."""

    def after_step(self) -> None:  # noqa: B027  (optional hook: most parameterizations need nothing)
        """Called after each optimiser step, under no_grad."""

    def state(self) -> dict:
        """Hyperparameters for the run record."""
        return {"name": type(self).__name__}
