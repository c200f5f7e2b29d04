"""MACO (Fel et al., NeurIPS 2023, "Unlocking feature visualization for deeper networks with magnitude constrained
optimization"): the amplitude spectrum is FIXED to that of natural images and only the phase is optimised.

Rendering, per image (B, 3, size, size):
    raw   = irfft2(M * exp(i * phi), norm="ortho")     M (3, size, size//2+1): the fixed magnitude, shared by the batch
    z     = (raw - mean(raw)) / (std(raw) + 1e-5)      standardised per image over channels and pixels
    x01   = sigmoid(C z)                                C: the ImageNet colour correlation of `vital.params.fourier`
    image = lo + x01 * (hi - lo)                        the model's normalisation
This follows the paper's published procedure (standardise, recorrelate colours, sigmoid), with two differences:
  * phi is not standardised before use: exp(i phi) only depends on phi mod 2 pi, so standardising the phase only
    rescales Adam's step;
  * phi is projected so that M exp(i phi) is exactly the rfft2 of a real image (Hermitian symmetry in the columns of
    frequency 0 and size/2, real values at the self-conjugate bins). Without it `irfft2` silently drops part of those
    columns and the rendered image would not have magnitude M. With it, rfft2(raw) == M exp(i phi) up to float error:
    the magnitude is exactly the fixed one, whatever the phase. At the (at most 4) self-conjugate bins per channel the
    phase is 0 or pi, chosen by the sign of cos(phi) (no gradient there).

The magnitude comes from real images (`maco_magnitude_from_images`, the mean |rfft2| over the images, per colour
channel) or from a file saved with `torch.save` (`load_magnitude`); it is never downloaded.

MACO's other two parts live outside the parameterization:
  * augmentation (`vital.run.transforms.crops_with_noise`): each step the loop shows the network `n_crops` random square crops of every image,
    resized to the model's input size, plus Gaussian noise. Published defaults: crops of 0.20-0.25 of the canvas side
    on a large canvas (1280 px in the authors' PyTorch release, 512 px in Xplique), 6 (PyTorch) or 32 (Xplique) crops
    per step, noise std 0.05-0.08 in the model's value range.
  * transparency: the loop accumulates |dL/d image| over the steps (the paper's attribution map); nothing here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F

from vital.errors import VitalError
from vital.params.base import Parameterization
from vital.params.fourier import recorrelate

STANDARDIZE_EPS = 1e-5


def magnitude_shape(size: int) -> tuple[int, int, int]:
    return (3, size, size // 2 + 1)


def maco_magnitude_from_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Mean amplitude spectrum |rfft2(x, norm="ortho")| of `images` (N, 3, H, W) in [0, 1], resized (bilinear,
    antialiased) to `size` x `size`: (3, size, size//2+1), float64 on the images' device."""
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        raise VitalError(f"MACO needs real RGB images of shape (N, 3, H, W) with N >= 1, got {tuple(images.shape)}")
    if images.min() < -1e-6 or images.max() > 1 + 1e-6:
        raise VitalError("MACO's magnitude needs images in [0, 1]; undo the model's normalisation first "
                         "(VisionModel.denormalize)")
    x = images.to(torch.float64)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return torch.fft.rfft2(x, norm="ortho").abs().mean(dim=0)


def load_magnitude(path: str | Path, size: int) -> torch.Tensor:
    """A magnitude spectrum saved with `torch.save`, checked to fit a `size` x `size` parameterization."""
    path = Path(path)
    fix = (f"compute it from real images with vital.params.maco.maco_magnitude_from_images(images, {size}) and "
           f"save it with torch.save(magnitude, '{path}')")
    if not path.is_file():
        raise VitalError(f"MACO magnitude file {path} not found; {fix}")
    try:
        mag = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure is the same user problem: not a saved tensor
        raise VitalError(f"MACO magnitude file {path} is not a saved tensor ({e}); {fix}") from e
    if not isinstance(mag, torch.Tensor) or tuple(mag.shape) != magnitude_shape(size):
        got = tuple(mag.shape) if isinstance(mag, torch.Tensor) else type(mag).__name__
        raise VitalError(f"MACO magnitude file {path} holds {got}, expected shape {magnitude_shape(size)} for "
                         f"{size} px; {fix}")
    if not torch.isfinite(mag).all() or (mag < 0).any():
        raise VitalError(f"MACO magnitude file {path} has negative or non-finite values; {fix}")
    return mag


def _self_conjugate_columns(size: int) -> list[int]:
    """rfft2 columns whose values must be Hermitian along the height axis for the image to be real."""
    return [0, size // 2] if size % 2 == 0 else [0]


def _mirror(size: int, device: torch.device) -> torch.Tensor:
    """Row index of frequency -k for each row k."""
    return (-torch.arange(size, device=device)) % size


def symmetrize_magnitude(mag: torch.Tensor) -> torch.Tensor:
    """Make the self-conjugate columns even along the height axis (|X(-k)| = |X(k)| for a real image); a magnitude
    computed from real images is unchanged up to float error."""
    size = mag.shape[-2]
    cols = torch.tensor(_self_conjugate_columns(size), device=mag.device)
    part = mag.index_select(-1, cols)
    even = 0.5 * (part + part[..., _mirror(size, mag.device), :])
    return mag.index_copy(-1, cols, even)


def hermitian_phase(phi: torch.Tensor, size: int) -> torch.Tensor:
    """Project a free phase (..., size, size//2+1) onto the phases of real images: odd along the height axis in the
    self-conjugate columns, and 0 or pi at the self-conjugate bins."""
    cols = torch.tensor(_self_conjugate_columns(size), device=phi.device)
    mirror = _mirror(size, phi.device)
    part = phi.index_select(-1, cols)
    odd = 0.5 * (part - part[..., mirror, :])
    fixed = (mirror == torch.arange(size, device=phi.device))[:, None]  # rows 0 and size/2
    sign_phase = (torch.cos(part) < 0).to(phi.dtype).detach() * torch.pi
    return phi.index_copy(-1, cols, torch.where(fixed, sign_phase, odd))


def phase_of(x: torch.Tensor) -> torch.Tensor:
    """Phase of the spectrum of real images (B, 3, H, W): the `init_phase` that renders them with their own magnitude."""
    return torch.angle(torch.fft.rfft2(x, norm="ortho"))


class MacoParam(Parameterization):
    """B images of `size` x `size` px with the fixed magnitude `magnitude` and optimised phases."""

    def __init__(self, batch: int, size: int, lo: torch.Tensor, hi: torch.Tensor, *, magnitude: torch.Tensor,
                 generator: torch.Generator, init_phase: torch.Tensor | None = None):
        """`magnitude` (3, size, size//2+1); `init_phase` (B, 3, size, size//2+1) replaces the uniform random phase in
        [-pi, pi) drawn on the CPU `generator` (a seed gives the same image on every device)."""
        super().__init__(batch, size, lo, hi)
        if tuple(magnitude.shape) != magnitude_shape(size):
            raise VitalError(f"a MACO magnitude for {size} px must have shape {magnitude_shape(size)}, got "
                             f"{tuple(magnitude.shape)}; compute it with maco_magnitude_from_images(images, {size})")
        self.magnitude = symmetrize_magnitude(magnitude.detach().to(device=lo.device, dtype=lo.dtype))
        shape = (batch, *magnitude_shape(size))
        if init_phase is None:
            init_phase = (torch.rand(shape, generator=generator, device=generator.device) * 2 - 1) * torch.pi
        elif tuple(init_phase.shape) != shape:
            raise VitalError(f"a MACO init_phase must have shape {shape}, got {tuple(init_phase.shape)}")
        self.phase_param = init_phase.to(device=lo.device, dtype=lo.dtype).clone().requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.phase_param]

    def phase(self) -> torch.Tensor:
        """The phase actually rendered (after the projection onto real images' phases)."""
        return hermitian_phase(self.phase_param, self.size)

    def raw(self) -> torch.Tensor:
        """irfft2(M exp(i phi)) before normalisation: its spectrum has magnitude exactly M."""
        spec = torch.polar(self.magnitude.expand_as(self.phase_param), self.phase())
        return torch.fft.irfft2(spec, s=(self.size, self.size), norm="ortho")

    def image01(self) -> torch.Tensor:
        """(B, 3, size, size) in (0, 1)."""
        raw = self.raw()
        mean = raw.mean(dim=(1, 2, 3), keepdim=True)
        std = raw.std(dim=(1, 2, 3), keepdim=True)
        return torch.sigmoid(recorrelate((raw - mean) / (std + STANDARDIZE_EPS)))

    def image(self) -> torch.Tensor:
        return self.lo + self.image01() * (self.hi - self.lo)

    def state(self) -> dict:
        digest = hashlib.sha256(self.magnitude.detach().cpu().to(torch.float64).numpy().tobytes()).hexdigest()
        return {"name": "maco", "magnitude_sha256": digest[:16], "squash": "standardize+recorrelate+sigmoid"}
