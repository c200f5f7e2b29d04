"""Every random transformation between the optimised image and the network, in one place.

The loop applies `jitter` and `flip` to every method's image; a recipe may add an `Augment` on top (Lucid's random
scaling, MACO's random crops with noise). All randomness comes from the loop's CPU generator, so a seed gives the
same transformations on any device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from vital.errors import VitalError

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def jitter(x: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Circular shift of (B, C, H, W) by (dy, dx), each uniform in the integers of [-pixels, pixels]."""
    if pixels <= 0:
        return x
    dy, dx = torch.randint(-pixels, pixels + 1, (2,), generator=generator, device=generator.device).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Horizontal flip of the whole batch with probability 1/2."""
    return x.flip(3) if torch.rand((), generator=generator, device=generator.device) < 0.5 else x


def random_scale(x: torch.Tensor, generator: torch.Generator, lo: float = 0.9, hi: float = 1.1) -> torch.Tensor:
    """Lucid's random scaling: resize by s ~ U(lo, hi), then back to the input size (crop when larger, resize when
    smaller)."""
    s = float(torch.empty((), device=generator.device).uniform_(lo, hi, generator=generator))
    y = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
    if s < 1:
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return y[..., : x.shape[-2], : x.shape[-1]]


def crop_boxes(n: int, generator: torch.Generator, crop_scale: Sequence[float] = (0.20, 0.25)) -> torch.Tensor:
    """`n` random square crops inside the image, as rows (side, cx, cy): `side` is the fraction of the image side,
    uniform in `crop_scale`; the centre (cx, cy) is uniform in normalised coordinates [-1, 1] (the image's outer
    pixel edges, as `F.grid_sample` with align_corners=False) so that the crop stays inside the image."""
    lo, hi = crop_scale
    if not 0 < lo <= hi <= 1:
        raise VitalError(f"crop_scale must satisfy 0 < min <= max <= 1, got {tuple(crop_scale)}")
    side = lo + (hi - lo) * torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
    centre = torch.rand(n, 2, generator=generator, device=generator.device, dtype=torch.float64) * 2 - 1
    centre = centre * (1 - side[:, None])
    return torch.cat([side[:, None], centre], dim=1)


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, out_size: int) -> torch.Tensor:
    """Crop image `i // (len(boxes) // B)` of `x` (B, C, H, W) at each box and resize it bilinearly to `out_size`:
    (len(boxes), C, out_size, out_size), differentiable with respect to `x`. Boxes come in sample-major order."""
    n = boxes.shape[0]
    if n % x.shape[0]:
        raise VitalError(f"{n} crop boxes do not divide evenly among {x.shape[0]} images")
    side, cx, cy = boxes.to(device=x.device, dtype=x.dtype).unbind(1)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = side, side, cx, cy
    grid = F.affine_grid(theta, [n, x.shape[1], out_size, out_size], align_corners=False)
    src = x.repeat_interleave(n // x.shape[0], dim=0)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)


def crops_with_noise(x: torch.Tensor, generator: torch.Generator, n_crops: int, out_size: int, *,
                     crop_scale: Sequence[float] = (0.20, 0.25), noise: float | torch.Tensor = 0.05) -> torch.Tensor:
    """MACO's per-step augmentation of `x` (B, 3, H, W): `n_crops` random crops per image (sample-major: rows
    b * n_crops ... (b+1) * n_crops - 1 come from image b), resized to `out_size`, plus N(0, noise^2) noise in
    the units of `x` (pass `s * (hi - lo)` for a std of s in [0, 1] pixels). Returns (B * n_crops, 3, out_size,
    out_size); objectives average their per-crop loss back to one per image (`vital.objectives.Views`)."""
    if n_crops < 1:
        raise VitalError(f"n_crops must be at least 1, got {n_crops}")
    boxes = crop_boxes(x.shape[0] * n_crops, generator, crop_scale)
    crops = crop_resize(x, boxes, out_size)
    # the noise is drawn where x lives (no large host-to-device copy each step), seeded from the CPU generator
    local = torch.Generator(device=x.device).manual_seed(int(torch.randint(2**62, (), generator=generator,
                                                                          device=generator.device)))
    eps = torch.randn(crops.shape, generator=local, device=x.device, dtype=x.dtype)
    return crops + eps * (noise.to(x) if isinstance(noise, torch.Tensor) else noise)


def affine_scale_rotate(x: torch.Tensor, scale: float, degrees: float) -> torch.Tensor:
    """(B, C, H, W) zoomed by `scale` (> 1 enlarges) and rotated by `degrees` about the centre (from +x towards +y
    in pixel coordinates, y pointing down),
    bilinear, border pixels repeated outside the image; differentiable with respect to `x`."""
    a = torch.deg2rad(torch.tensor(degrees, dtype=torch.float64))
    cos, sin = float(torch.cos(a)) / scale, float(torch.sin(a)) / scale
    # output pixel at normalised (u, v) samples the input at R(-a) (u, v) / scale
    theta = torch.tensor([[cos, sin, 0.0], [-sin, cos, 0.0]], device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


SCALE_RANGE = (0.9, 1.1)  # Lucid's standard transforms: random scale 0.9-1.1 and rotation within +-10 degrees
ROTATE_DEGREES = 10.0


def scale_rotate(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Transformation robustness (Lucid's standard transforms): one random scale s ~ U(0.9, 1.1) and rotation
    ~ U(-10, 10) degrees for the whole batch, on top of the loop's jitter."""
    def draw(lo: float, hi: float) -> float:
        return float(torch.empty((), dtype=torch.float64, device=generator.device).uniform_(lo, hi, generator=generator))

    s, d = draw(*SCALE_RANGE), draw(-ROTATE_DEGREES, ROTATE_DEGREES)
    return affine_scale_rotate(x, s, d)
