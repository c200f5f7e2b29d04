"""Top-k accuracy of the target class, by the target model or by independent judge classifiers.

A visualization is judged on its whole canvas: each image is resized so that its shorter side is the judge's input
size and centre-cropped to a square (a square visualization is simply resized), then normalised with the judge's
own mean/std and interpolation. `margin=True` uses the judge's usual evaluation crop instead (shorter side to
`model.resize`, then the central `model.size` pixels), as for real photographs in an ImageNet evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF
from tqdm.auto import tqdm

from vital.errors import VitalError
from vital.models import VisionModel, load_model

ImageLike = torch.Tensor | str | os.PathLike
Images = torch.Tensor | Sequence[ImageLike]
DEFAULT_JUDGES = ("efficientnet_lite1", "efficientnet_lite2")


def as_image_list(images: Images) -> list[torch.Tensor]:
    """A batch tensor (B,3,H,W), or a list of (3,H,W) tensors and/or image paths, as float (3,H,W) tensors in
    [0,1] on the CPU (images of different sizes stay separate)."""
    from vital.references.images import UNREADABLE, load_rgb

    def checked(im: torch.Tensor, i: int) -> torch.Tensor:
        if not bool(torch.isfinite(im).all()):  # clamping would turn NaN into a valid-looking image
            raise VitalError(f"image {i} has NaN or infinite pixels; it cannot be judged")
        return im.detach().float().cpu().clamp(0, 1)

    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise VitalError(f"images must be (B, 3, H, W) in [0,1], got shape {tuple(images.shape)}")
        return [checked(im, i) for i, im in enumerate(images)]
    out = []
    for i, im in enumerate(images):
        if isinstance(im, torch.Tensor):
            if im.dim() == 4 and im.shape[0] == 1:
                im = im[0]
            if im.dim() != 3 or im.shape[0] != 3:
                raise VitalError(f"an image tensor must be (3, H, W) in [0,1], got shape {tuple(im.shape)}")
            out.append(checked(im, i))
        else:
            try:
                out.append(TF.to_tensor(load_rgb(im)))
            except UNREADABLE as e:
                raise VitalError(f"cannot read image {im} ({type(e).__name__}); check the path") from e
    return out


def preprocess(model: VisionModel, image01: torch.Tensor, margin: bool = False) -> torch.Tensor:
    """One [0,1] image (3,H,W) to the model's input (3,size,size): resize shorter side, centre crop, normalise."""
    side = model.resize if margin else model.size
    interp = InterpolationMode(model.interpolation)
    x = TF.resize(image01, side, interpolation=interp, antialias=True)
    x = TF.center_crop(x, [model.size, model.size]).clamp(0, 1)
    return model.normalize(x.unsqueeze(0))[0]


def target_ranks(logits: torch.Tensor, targets: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """1-based rank of each target class among its row's logits: 1 + the number of classes scored strictly higher
    (rank 1 is a top-1 hit; ties count in the target's favour)."""
    t = torch.as_tensor(targets, device=logits.device, dtype=torch.long)
    own = logits.gather(1, t.view(-1, 1))
    return (logits > own).sum(1) + 1


def topk_accuracy(model: VisionModel, images: Images, targets: Sequence[int], ks: Sequence[int] = (1, 5),
                  batch_size: int = 32, margin: bool = False, progress: bool = False) -> dict:
    """Classify `images` with `model` and score the `targets`.

    Returns {"model", "n", "ranks" (per image, 1 = top-1), "top_classes" (per image, the max(ks) best classes),
    "top1", "top5", ... (fractions in [0,1], one per k)}."""
    ims = as_image_list(images)
    targets = [int(t) for t in targets]
    if len(ims) != len(targets):
        raise VitalError(f"{len(ims)} images but {len(targets)} target classes: give one class per image")
    if not ims:
        raise VitalError("no images to classify")
    ks = sorted({int(k) for k in ks})
    ranks: list[int] = []
    tops: list[list[int]] = []
    dev, dtype = model.device, model.dtype
    with torch.no_grad():
        starts = range(0, len(ims), batch_size)
        for s in tqdm(starts, desc=f"classify ({model.name})", disable=not progress, leave=False):
            x = torch.stack([preprocess(model, im, margin) for im in ims[s:s + batch_size]]).to(dev, dtype)
            logits = model(x)
            if logits.dim() != 2:
                raise VitalError(f"{model.name} returns outputs of shape {tuple(logits.shape)}, not class logits")
            n_cls = logits.shape[1]
            bad = [t for t in targets[s:s + batch_size] if not 0 <= t < n_cls]
            if bad:
                raise VitalError(f"target class {bad[0]} is out of range for {model.name} ({n_cls} classes)")
            ranks += target_ranks(logits, targets[s:s + batch_size]).tolist()
            tops += logits.topk(min(max(ks), n_cls), dim=1).indices.tolist()
    out: dict = {"model": model.name, "n": len(ims), "ranks": ranks, "top_classes": tops}
    for k in ks:
        out[f"top{k}"] = sum(r <= k for r in ranks) / len(ranks)
    return out


def load_judges(names: Sequence[str] = DEFAULT_JUDGES, device: str | torch.device = "cpu") -> list[VisionModel]:
    """Independent classifiers, by name, with their pretrained weights from disk."""
    return [load_model(n, device=device) for n in names]
