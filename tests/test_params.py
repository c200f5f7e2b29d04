"""Fourier and MACO parameterizations: rendering against independent numpy computations, exact round trips, the
fixed magnitude under optimisation, and MACO's crops against scipy's interpolation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from vital.errors import VitalError
from vital.params.fourier import FourierParam
from vital.params.maco import MacoParam, load_magnitude, maco_magnitude_from_images, phase_of
from vital.run.transforms import crop_boxes, crop_resize, crops_with_noise

MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
LO, HI = -MEAN / STD, (1 - MEAN) / STD  # as VisionModel.pixel_bounds

# Lucid's published colour-correlation sqrt, rows = RGB output, columns = decorrelated input.
C_PUBLISHED = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- Fourier


def _fourier_reference(spectrum: np.ndarray, size: int) -> np.ndarray:
    """Independent rendering with numpy and explicit frequency loops."""
    scale = np.zeros((size, size // 2 + 1))
    for ky in range(size):
        fy = (ky if ky <= (size - 1) // 2 else ky - size) / size
        for kx in range(size // 2 + 1):
            f = math.hypot(fy, kx / size)
            scale[ky, kx] = 1.0 / max(f, 1.0 / size)
    spec = (spectrum[..., 0] + 1j * spectrum[..., 1]) * scale
    z = np.fft.irfft2(spec, s=(size, size), norm="ortho") / 4.0
    c = C_PUBLISHED / max(np.linalg.norm(C_PUBLISHED[:, j]) for j in range(3))
    rgb = np.einsum("ij,bjhw->bihw", c, z)
    return 1.0 / (1.0 + np.exp(-rgb))


@pytest.mark.parametrize("size", [16, 15])
def test_fourier_renders_like_lucid(size):
    p = FourierParam(2, size, LO, HI, generator=_gen(), sd=0.5)
    ref = _fourier_reference(p.spectrum.detach().numpy(), size)
    np.testing.assert_allclose(p.image01().detach().numpy(), ref, rtol=0, atol=1e-12)
    # image() is the model's normalisation of image01()
    torch.testing.assert_close(p.image(), (p.image01() - MEAN) / STD, rtol=0, atol=1e-12)


def test_fourier_seeded_and_inside_bounds():
    a = FourierParam(2, 16, LO, HI, generator=_gen(3)).image()
    b = FourierParam(2, 16, LO, HI, generator=_gen(3)).image()
    c = FourierParam(2, 16, LO, HI, generator=_gen(4)).image()
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.shape == (2, 3, 16, 16) and a.dtype == torch.float64
    assert (a > LO).all() and (a < HI).all()


@pytest.mark.parametrize("size", [32, 31])
def test_fourier_round_trip(size):
    x01 = torch.rand(2, 3, size, size, generator=_gen(1), dtype=torch.float64) * 0.98 + 0.01
    p = FourierParam.from_image(x01, LO, HI)
    torch.testing.assert_close(p.image01(), x01, rtol=0, atol=1e-10)
    torch.testing.assert_close(p.image(), (x01 - MEAN) / STD, rtol=0, atol=1e-9)


def test_fourier_round_trip_float32():
    x01 = torch.rand(1, 3, 32, 32, generator=_gen(2)) * 0.9 + 0.05
    p = FourierParam.from_image(x01, LO.float(), HI.float())
    torch.testing.assert_close(p.image01(), x01, rtol=0, atol=1e-5)


def test_fourier_from_image_rejects_saturated_pixels():
    x01 = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    x01[0, 0, 0, 0] = 1.0
    with pytest.raises(VitalError, match="strictly inside"):
        FourierParam.from_image(x01, LO, HI)


def test_fourier_optimises():
    p = FourierParam(1, 16, LO, HI, generator=_gen())
    opt = torch.optim.Adam(p.parameters(), lr=0.5)
    start = p.image01()[:, 0].mean().item()
    for _ in range(10):
        opt.zero_grad()
        (-p.image01()[:, 0].mean()).backward()  # make the image redder
        opt.step()
    assert p.image01()[:, 0].mean().item() > start + 0.05


# ---------------------------------------------------------------- MACO


def test_magnitude_from_images_matches_numpy():
    imgs = torch.rand(3, 3, 16, 16, generator=_gen(), dtype=torch.float64)
    mag = maco_magnitude_from_images(imgs, 16)
    ref = np.mean([np.abs(np.fft.rfft2(im, norm="ortho")) for im in imgs.numpy()], axis=0)
    assert mag.shape == (3, 16, 9)
    np.testing.assert_allclose(mag.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_magnitude_from_images_resizes_and_validates():
    imgs = torch.rand(2, 3, 40, 30, generator=_gen())
    assert maco_magnitude_from_images(imgs, 16).shape == (3, 16, 9)
    with pytest.raises(VitalError, match=r"\[0, 1\]"):
        maco_magnitude_from_images(imgs * 2 - 1, 16)
    with pytest.raises(VitalError, match="RGB"):
        maco_magnitude_from_images(imgs[:, :1], 16)


def _magnitude(size: int) -> torch.Tensor:
    return maco_magnitude_from_images(torch.rand(4, 3, size, size, generator=_gen(5), dtype=torch.float64), size)


@pytest.mark.parametrize("size", [16, 15])
def test_maco_magnitude_stays_fixed_while_phase_is_optimised(size):
    mag = _magnitude(size)
    p = MacoParam(2, size, LO, HI, magnitude=mag, generator=_gen())
    kept = p.magnitude.clone()
    assert all(t is not p.magnitude for t in p.parameters())
    phase0 = p.phase().detach().clone()
    weights = torch.randn(1, 3, size, size, generator=_gen(7), dtype=torch.float64)
    opt = torch.optim.Adam(p.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        (p.image() * weights).sum().backward()
        opt.step()
    assert torch.equal(p.magnitude, kept)
    torch.testing.assert_close(p.magnitude, mag, rtol=1e-12, atol=1e-12)  # real images: symmetric already
    spectrum = torch.fft.rfft2(p.raw().detach(), norm="ortho")
    torch.testing.assert_close(spectrum.abs(), mag.expand_as(spectrum.abs()), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(spectrum, torch.polar(mag.expand_as(phase0), p.phase().detach()),
                               rtol=1e-10, atol=1e-10)
    assert (p.phase().detach() - phase0).abs().max() > 0.05


@pytest.mark.parametrize("size", [16, 15])
def test_maco_renders_an_image_from_its_own_magnitude_and_phase(size):
    x = torch.randn(1, 3, size, size, generator=_gen(9), dtype=torch.float64)
    mag = torch.fft.rfft2(x, norm="ortho").abs()[0]
    p = MacoParam(1, size, LO, HI, magnitude=mag, generator=_gen(), init_phase=phase_of(x))
    torch.testing.assert_close(p.raw(), x, rtol=0, atol=1e-10)


def test_maco_phase_round_trip():
    size = 16
    p = MacoParam(2, size, LO, HI, magnitude=_magnitude(size), generator=_gen(1))
    back = phase_of(p.raw().detach())
    # compare on the unit circle: phases are defined modulo 2 pi
    torch.testing.assert_close(torch.polar(torch.ones_like(back), back),
                               torch.polar(torch.ones_like(back), p.phase().detach()), rtol=0, atol=1e-9)
    q = MacoParam(2, size, LO, HI, magnitude=_magnitude(size), generator=_gen(), init_phase=back)
    torch.testing.assert_close(q.raw(), p.raw(), rtol=0, atol=1e-10)


def test_maco_image_normalisation():
    size = 16
    p = MacoParam(2, size, LO, HI, magnitude=_magnitude(size), generator=_gen())
    raw = p.raw().detach().numpy()
    c = C_PUBLISHED / max(np.linalg.norm(C_PUBLISHED[:, j]) for j in range(3))
    expected = []
    for r in raw:
        z = (r - r.mean()) / (r.std(ddof=1) + 1e-5)
        expected.append(1 / (1 + np.exp(-np.einsum("ij,jhw->ihw", c, z))))
    np.testing.assert_allclose(p.image01().detach().numpy(), np.stack(expected), rtol=0, atol=1e-12)
    img = p.image()
    torch.testing.assert_close(img, (p.image01() - MEAN) / STD)
    assert (img > LO).all() and (img < HI).all()
    same = MacoParam(2, size, LO, HI, magnitude=_magnitude(size), generator=_gen())
    assert torch.equal(same.image(), img.detach())
    assert len(p.state()["magnitude_sha256"]) == 16


def test_maco_rejects_wrong_magnitude_shape():
    with pytest.raises(VitalError, match="maco_magnitude_from_images"):
        MacoParam(1, 16, LO, HI, magnitude=torch.ones(3, 16, 16), generator=_gen())


def test_load_magnitude(tmp_path):
    mag = _magnitude(16)
    path = tmp_path / "mag.pt"
    torch.save(mag, path)
    torch.testing.assert_close(load_magnitude(path, 16), mag, rtol=0, atol=0)
    with pytest.raises(VitalError, match=r"not found.*maco_magnitude_from_images"):
        load_magnitude(tmp_path / "missing.pt", 16)
    with pytest.raises(VitalError, match=r"expected shape \(3, 32, 17\)"):
        load_magnitude(path, 32)
    (tmp_path / "junk.pt").write_text("not a tensor")
    with pytest.raises(VitalError, match="not a saved tensor"):
        load_magnitude(tmp_path / "junk.pt", 16)


def test_crop_resize_matches_scipy_bilinear():
    size, out = 20, 12
    x = torch.randn(2, 3, size, size, generator=_gen(), dtype=torch.float64)
    boxes = crop_boxes(4, _gen(2), crop_scale=(0.3, 0.8))
    crops = crop_resize(x, boxes, out)
    assert crops.shape == (4, 3, out, out)
    u = -1 + (2 * np.arange(out) + 1) / out  # output pixel centres in the crop's normalised coordinates
    for k, (side, cx, cy) in enumerate(boxes.numpy()):
        img = x[k // 2].numpy()  # sample-major: two crops per image
        col = ((cx + side * u + 1) * size - 1) / 2
        row = ((cy + side * u + 1) * size - 1) / 2
        rr, cc = np.meshgrid(row, col, indexing="ij")
        for ch in range(3):
            ref = ndimage.map_coordinates(img[ch], [rr, cc], order=1, mode="nearest")
            np.testing.assert_allclose(crops[k, ch].numpy(), ref, rtol=0, atol=1e-12)


def test_crop_boxes_stay_inside():
    boxes = crop_boxes(200, _gen(), crop_scale=(0.2, 0.25))
    side, centre = boxes[:, 0], boxes[:, 1:]
    assert ((side >= 0.2) & (side <= 0.25)).all()
    assert (centre.abs() + side[:, None] <= 1 + 1e-12).all()
    with pytest.raises(VitalError, match="crop_scale"):
        crop_boxes(1, _gen(), crop_scale=(0.5, 0.2))


def test_crops_with_noise_full_crop_is_identity_plus_noise():
    x = torch.randn(2, 3, 32, 32, generator=_gen(), dtype=torch.float64)
    clean = crops_with_noise(x, _gen(1), 3, 32, crop_scale=(1.0, 1.0), noise=0.0)
    torch.testing.assert_close(clean, x.repeat_interleave(3, dim=0), rtol=0, atol=1e-12)
    noisy = crops_with_noise(x, _gen(1), 3, 32, crop_scale=(1.0, 1.0), noise=0.1)
    assert abs((noisy - clean).std().item() - 0.1) < 0.005
    again = crops_with_noise(x, _gen(1), 3, 32, crop_scale=(1.0, 1.0), noise=0.1)
    assert torch.equal(noisy, again)
    small = crops_with_noise(x.requires_grad_(True), _gen(1), 4, 24)
    assert small.shape == (8, 3, 24, 24)
    small.sum().backward()
    assert x.grad.abs().sum() > 0
