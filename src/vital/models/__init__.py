"""Models: names to ready-to-use `VisionModel`s, and the per-architecture preset table."""

from vital.models.presets import Preset, preset_for
from vital.models.zoo import VisionModel, available_models, load_model, resolve_device

__all__ = ["Preset", "VisionModel", "available_models", "load_model", "preset_for", "resolve_device"]
