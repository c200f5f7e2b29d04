"""Raw pixels in the model's normalised input space (the authors' setting, arXiv 2503.22399, method section): N(0,1) init, clamped to valid pixels."""

from __future__ import annotations

import torch

from vital.params.base import Parameterization


class PixelParam(Parameterization):
    def __init__(self, batch: int, size: int, lo: torch.Tensor, hi: torch.Tensor, *, generator: torch.Generator,
                 clip: bool = True, init: torch.Tensor | None = None):
        super().__init__(batch, size, lo, hi)
        if init is None:
            # drawn where the (CPU) generator lives: the same draw on any device
            init = torch.randn(batch, 3, size, size, generator=generator, device=generator.device)
        self.x = init.to(device=lo.device, dtype=lo.dtype).clone().requires_grad_(True)
        self.clip = clip

    def parameters(self) -> list[torch.Tensor]:
        return [self.x]

    def image(self) -> torch.Tensor:
        return self.x

    def after_step(self) -> None:
        if self.clip:
            self.x.data = torch.maximum(torch.minimum(self.x.data, self.hi), self.lo)

    def state(self) -> dict:
        return {"name": "pixel", "clip": self.clip}
