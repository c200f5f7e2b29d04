"""JPEG decoding on the model's device for mining (`mine(..., decode="device")`).

The loader reads file bytes only; `torchvision.io.decode_jpeg` decodes a whole batch on the model's device
(nvJPEG on CUDA), and the model's preprocessing (resize of the shorter side with antialiasing, centre crop,
normalisation) runs there too, so that a GPU mining pass is not held back by the CPU cores that decode. Files that
are not JPEG, and JPEGs the device decoder refuses (CMYK, damaged), go through PIL with the model's own transform
(in the loader, or here when the decoder refuses them); a file neither can read is reported unreadable, as with PIL.

The result differs from PIL's preprocessing only by the decoders' rounding and the tensor resize's filter
(bench/gpu.py measures it); the same code runs on the CPU (libjpeg-turbo), where the tests compare it with PIL.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch.utils.data import Dataset

from vital.models.zoo import VisionModel
from vital.references.images import UNREADABLE, load_rgb

JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")


class RawFolder(Dataset):
    """The files of a folder source as payloads: ("jpeg", bytes as a uint8 tensor) for JPEG files, ("pixels",
    preprocessed tensor) for the others (decoded by PIL in the loader); with index, ok and name as `_Folder`."""

    def __init__(self, root: Path, files: list[str], transform, size: int):
        self.root, self.files, self.transform, self.size = root, files, transform, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = self.root / self.files[i]
        try:
            if path.suffix.lower() in JPEG_SUFFIXES:
                return ("jpeg", torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)), i, True, self.files[i]
            return ("pixels", self.transform(load_rgb(path))), i, True, self.files[i]
        except UNREADABLE:
            return ("pixels", torch.zeros(3, self.size, self.size, device="cpu")), i, False, self.files[i]


def collate(items: list) -> tuple[list, torch.Tensor, torch.Tensor, list[str]]:
    """Payloads as a list (images of any size), the rest as the default collate would make them (on the CPU, named:
    the loader's batches go to the model's device in one copy)."""
    return ([it[0] for it in items], torch.tensor([it[1] for it in items], device="cpu"),
            torch.tensor([it[2] for it in items], device="cpu"), [it[3] for it in items])


def collate_pixels(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """`collate` for preprocessed images of one size: the payloads stacked."""
    payloads, index, ok, names = collate(items)
    return torch.stack(payloads), index, ok, names


class DeviceDecoder:
    """Payloads -> (B, 3, size, size) in model input space on the model's device, and which of them are readable."""

    def __init__(self, model: VisionModel, size: int | None = None):
        from torchvision.transforms import InterpolationMode

        self.size = size or model.size
        self.resize = round(model.resize * self.size / model.size)
        self.interpolation = InterpolationMode(model.interpolation)
        self.device, self.dtype = model.device, model.dtype
        self.mean = torch.tensor(model.mean, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(model.std, device=self.device).view(3, 1, 1)
        self.pil = model.transform(self.size)

    def _decode(self, data: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """uint8 (3, H, W) images on the device, None where the decoder refuses the file (one call per batch)."""
        with warnings.catch_warnings():  # torchvision 0.29 announces these decoders' move to TorchCodec
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg

            try:
                return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True))
            except RuntimeError:  # one bad file fails the batch call: decode one by one
                out: list[torch.Tensor | None] = []
                for d in data:
                    try:
                        out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=self.device,
                                               apply_exif_orientation=True))
                    except RuntimeError:
                        out.append(None)
                return out

    def _preprocess(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        image = TF.resize(image, [self.resize], interpolation=self.interpolation, antialias=True)
        image = TF.center_crop(image, [self.size, self.size])
        return (image.float() / 255 - self.mean) / self.std

    def _by_pil(self, data: torch.Tensor) -> torch.Tensor | None:
        try:
            return self.pil(load_rgb(io.BytesIO(data.numpy().tobytes())))
        except UNREADABLE:
            return None

    def __call__(self, payloads: list[tuple[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        jpeg = [i for i, (kind, _) in enumerate(payloads) if kind == "jpeg"]
        decoded = dict(zip(jpeg, self._decode([payloads[i][1] for i in jpeg]), strict=True)) if jpeg else {}
        rows, ok = [], []
        for i, (kind, data) in enumerate(payloads):
            if kind == "pixels":
                x: torch.Tensor | None = data.to(self.device)
            elif (image := decoded[i]) is not None:
                x = self._preprocess(image)
            else:
                x = self._by_pil(data)
                x = None if x is None else x.to(self.device)
            ok.append(x is not None)
            rows.append(x if x is not None else torch.zeros(3, self.size, self.size, device=self.device))
        return torch.stack(rows).to(self.dtype), torch.tensor(ok, device=rows[0].device)
