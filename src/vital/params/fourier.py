"""Lucid-style Fourier parameterization (Olah et al., Distill 2017): a 1/f-scaled real-FFT spectrum per image and
channel, ImageNet colour decorrelation, and a sigmoid to valid pixels.

Rendering, per image: spectrum S (B, 3, size, size//2+1) complex, stored as a real tensor (..., 2) so that every
optimiser and gradient clipper sees ordinary floats;
    z   = irfft2(S * scale, norm="ortho") / 4          scale = 1 / max(|f|, 1/size) ** decay_power
    c   = C z  (per pixel)                              C = colour-correlation sqrt, columns scaled to max norm 1
    x01 = sigmoid(c);   image = lo + x01 * (hi - lo)    the model's normalisation, since lo = -mean/std, hi = (1-mean)/std
`norm="ortho"` equals Lucid's `sqrt(h*w)` factor with an unnormalised inverse; the 1/4 and the init standard deviation
0.01 are Lucid's values. The sigmoid keeps pixels strictly inside (0, 1): no clipping is needed, and an image is
exactly representable (see `from_image`) when its pixels are strictly inside (0, 1).
"""

from __future__ import annotations

import torch

from vital.errors import VitalError
from vital.params.base import Parameterization

# Square root of the ImageNet RGB colour-correlation matrix (Lucid's `color_correlation_svd_sqrt`, published values).
COLOR_CORRELATION_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                                       [0.27, 0.00, -0.05],
                                       [0.27, -0.09, 0.03]], dtype=torch.float64)
SPATIAL_SCALE = 4.0  # Lucid divides the rendered spectrum by 4 so that the initial sigmoid is far from saturation


def color_matrix(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The colour-correlation sqrt with its columns scaled so that the largest has unit norm (as Lucid does)."""
    c = COLOR_CORRELATION_SQRT / COLOR_CORRELATION_SQRT.norm(dim=0).max()
    return c.to(device=device, dtype=dtype)


def recorrelate(z: torch.Tensor) -> torch.Tensor:
    """Map decorrelated channels (B, 3, H, W) to RGB: every pixel vector v becomes C v."""
    return torch.einsum("ij,bjhw->bihw", color_matrix(z.dtype, z.device), z)


def decorrelate(rgb: torch.Tensor) -> torch.Tensor:
    """Inverse of `recorrelate`."""
    inv = torch.linalg.inv(color_matrix(torch.float64, rgb.device)).to(rgb.dtype)
    return torch.einsum("ij,bjhw->bihw", inv, rgb)


def frequency_scale(size: int, decay_power: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1 / max(|f|, 1/size) ** decay_power on the rfft2 grid (size, size//2+1): low frequencies get large steps."""
    fy = torch.fft.fftfreq(size, dtype=torch.float64, device="cpu")[:, None]  # float64 on the CPU: MPS has none
    fx = torch.fft.rfftfreq(size, dtype=torch.float64, device="cpu")[None, :]
    f = torch.sqrt(fx**2 + fy**2).clamp(min=1.0 / size)
    return (1.0 / f**decay_power).to(device=device, dtype=dtype)


def _check_image01(x01: torch.Tensor, size: int) -> None:
    if x01.dim() != 4 or x01.shape[1] != 3 or tuple(x01.shape[-2:]) != (size, size):
        raise VitalError(f"expected images of shape (B, 3, {size}, {size}), got {tuple(x01.shape)}; resize them first")
    if not ((x01 > 0) & (x01 < 1)).all():
        raise VitalError("a sigmoid parameterization needs pixels strictly inside (0, 1); clamp them, "
                         "e.g. x.clamp(1e-3, 1 - 1e-3)")


class FourierParam(Parameterization):
    """B images of `size` x `size` px, parameterised by their decorrelated, frequency-scaled spectra."""

    def __init__(self, batch: int, size: int, lo: torch.Tensor, hi: torch.Tensor, *, generator: torch.Generator,
                 decay_power: float = 1.0, sd: float = 0.01, init: torch.Tensor | None = None):
        """`init` (B, 3, size, size//2+1, 2), the real and imaginary parts of the spectrum, replaces the random
        N(0, sd) draw (made on the CPU `generator`, so a seed gives the same image on every device)."""
        super().__init__(batch, size, lo, hi)
        self.decay_power, self.sd = decay_power, sd
        self.scale = frequency_scale(size, decay_power, lo.dtype, lo.device)
        shape = (batch, 3, size, size // 2 + 1, 2)
        if init is None:
            init = sd * torch.randn(shape, generator=generator, device=generator.device)
        elif tuple(init.shape) != shape:
            raise VitalError(f"a Fourier init must have shape {shape}, got {tuple(init.shape)}")
        self.spectrum = init.to(device=lo.device, dtype=lo.dtype).clone().requires_grad_(True)

    @classmethod
    def from_image(cls, x01: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, *,
                   decay_power: float = 1.0) -> FourierParam:
        """The parameterization whose image is `x01` (B, 3, size, size), pixels strictly inside (0, 1)."""
        size = x01.shape[-1]
        _check_image01(x01, size)
        x01 = x01.to(device=lo.device, dtype=lo.dtype)
        z = decorrelate(torch.logit(x01)) * SPATIAL_SCALE
        spec = torch.fft.rfft2(z, norm="ortho") / frequency_scale(size, decay_power, lo.dtype, lo.device)
        return cls(x01.shape[0], size, lo, hi, generator=torch.Generator(device="cpu"), decay_power=decay_power,
                   init=torch.view_as_real(spec))

    def parameters(self) -> list[torch.Tensor]:
        return [self.spectrum]

    def image01(self) -> torch.Tensor:
        """(B, 3, size, size) in (0, 1)."""
        spec = torch.view_as_complex(self.spectrum) * self.scale
        z = torch.fft.irfft2(spec, s=(self.size, self.size), norm="ortho") / SPATIAL_SCALE
        return torch.sigmoid(recorrelate(z))

    def image(self) -> torch.Tensor:
        return self.lo + self.image01() * (self.hi - self.lo)

    def state(self) -> dict:
        return {"name": "fourier", "decay_power": self.decay_power, "sd": self.sd,
                "color_decorrelation": "imagenet", "squash": "sigmoid"}
