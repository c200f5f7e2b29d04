"""CLIP zero-shot accuracy of the target class: an optional metric, from a local open_clip checkpoint only.

Each image is scored against one text embedding per ImageNet class ("a photo of a {name}."); the target's rank
among the cosine similarities gives top-1/top-5. Without open_clip or without a weights file the metric is
skipped with one line that says how to enable it. Weights are never downloaded. The model is loaded once per call
and dropped after it; nothing is kept between calls.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchvision.transforms import functional as TF
from tqdm.auto import tqdm

from vital.errors import VitalError
from vital.metrics.classify import Images, as_image_list, target_ranks
from vital.models.offline import hf_offline

PROMPT = "a photo of a {}."
ENABLE = "pip install open_clip_torch and pass --clip-weights FILE (a local open_clip checkpoint)"


@dataclass
class ClipResult:
    """Zero-shot top-1/top-5 (fractions), per-image ranks (1 = top-1), or why the metric was skipped."""

    top1: float | None = None
    top5: float | None = None
    ranks: list[int] = field(default_factory=list)
    arch: str = ""
    skipped: str | None = None

    @property
    def n(self) -> int:
        return len(self.ranks)


def zero_shot_ranks(image_emb: torch.Tensor, text_emb: torch.Tensor, targets: Sequence[int]) -> torch.Tensor:
    """1-based rank of each target class by cosine similarity between image (N, D) and class text (K, D)
    embeddings: 1 + the number of classes whose text is strictly more similar to the image than the target's."""
    img = torch.nn.functional.normalize(image_emb.float(), dim=-1)
    txt = torch.nn.functional.normalize(text_emb.float(), dim=-1)
    return target_ranks(img @ txt.T, targets)


def imagenet_class_names() -> list[str]:
    """Curated ImageNet class names for prompts (open_clip's list), else torchvision's category names."""
    try:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    except ImportError:
        from vital.models.zoo import imagenet_categories

        return imagenet_categories()


def check_weights_file(weights: str | os.PathLike) -> Path:
    """A CLIP weights path that is an existing file (checked before any long computation)."""
    path = Path(weights)
    if not path.is_file():  # open_clip would take a name such as "openai" as a download
        what = "is a folder" if path.is_dir() else "does not exist"
        raise VitalError(f"CLIP weights file {path} {what}; pass a local open_clip checkpoint with --clip-weights "
                         "(weights are never downloaded)")
    return path


def _load_error(arch: str, weights: str, e: Exception) -> str:
    """One line for a checkpoint open_clip could not load: Python objects torch refuses to unpickle (said in
    vital's words, not torch's advice to unpickle them), or a wrong architecture."""
    import pickle

    text = str(e)
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in text or "Weights only load failed" in text:
        return (f"cannot read CLIP weights file {weights}: it holds Python objects besides tensors (or is damaged), "
                "which vital never unpickles; pass an open_clip checkpoint of tensors")
    return (f"cannot load CLIP {arch} from {weights}: {text.splitlines()[0][:200] if text else type(e).__name__}. "
            "Pass the --clip-arch that matches the checkpoint (e.g. ViT-B-32-quickgelu for OpenAI's weights).")


def _load(arch: str, weights: str, device: str):
    """(model, preprocess, tokenizer) of open_clip `arch` from the local checkpoint `weights`, never downloaded."""
    import open_clip

    check_weights_file(weights)
    with hf_offline():
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=weights, device=device)
            tokenizer = open_clip.get_tokenizer(arch)
        except Exception as e:  # a pickle, a wrong arch name, or a checkpoint of another architecture
            raise VitalError(_load_error(arch, weights, e)) from e
    return model.eval(), preprocess, tokenizer


def _class_text(model, tokenizer, device: str, names: Sequence[str]) -> torch.Tensor:
    """(K, D) text embeddings of the class prompts."""
    out = []
    with torch.no_grad():
        for s in range(0, len(names), 250):
            tokens = tokenizer([PROMPT.format(n) for n in names[s:s + 250]]).to(device)
            out.append(model.encode_text(tokens).float().cpu())
    return torch.cat(out)


def clip_zero_shot(images: Images, targets: Sequence[int], weights: str | os.PathLike | None = None,
                   arch: str = "ViT-B-32", class_names: Sequence[str] | None = None,
                   device: str | torch.device = "cpu", batch_size: int = 32, progress: bool = False) -> ClipResult:
    """Zero-shot top-1/top-5 of `targets` for [0,1] images, with open_clip `arch` and the checkpoint `weights`.
    Skipped (not an error) when open_clip is missing or no weights file is given; a path that is not a file is
    an error."""
    if weights is None:
        return ClipResult(arch=arch, skipped=f"CLIP zero-shot skipped: no CLIP weights given; {ENABLE}")
    path = check_weights_file(weights)
    try:
        import open_clip  # noqa: F401
    except ImportError:
        return ClipResult(arch=arch, skipped=f"CLIP zero-shot skipped: open_clip is not installed; {ENABLE}")
    ims = as_image_list(images)
    if len(ims) != len(targets):
        raise VitalError(f"{len(ims)} images but {len(targets)} target classes: give one class per image")
    names = tuple(class_names or imagenet_class_names())
    bad = [t for t in targets if not 0 <= int(t) < len(names)]
    if bad:
        raise VitalError(f"target class {bad[0]} has no class name ({len(names)} names): pass class_names")
    dev = str(torch.device(device))
    model, preprocess, tokenizer = _load(arch, str(path.resolve()), dev)
    text = _class_text(model, tokenizer, dev, names)
    emb = []
    with torch.no_grad():
        for s in tqdm(range(0, len(ims), batch_size), desc="CLIP", disable=not progress, leave=False):
            x = torch.stack([preprocess(TF.to_pil_image(im)) for im in ims[s:s + batch_size]]).to(dev)
            emb.append(model.encode_image(x).float().cpu())
    ranks = zero_shot_ranks(torch.cat(emb), text, [int(t) for t in targets]).tolist()
    return ClipResult(sum(r <= 1 for r in ranks) / len(ranks), sum(r <= 5 for r in ranks) / len(ranks), ranks, arch)
