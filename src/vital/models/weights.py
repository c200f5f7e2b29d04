"""Weights files: read as state dicts of tensors only (never unpickling code), found where torch.hub keeps them,
and every failure said in one line without torch's advice to unpickle."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vital.errors import VitalError


def checked_weights(weights: object) -> str | None:
    """The `weights` argument of `load_model`: "default", a weights name or a file path (str or Path), or None
    (random; "none" too); any other type is a one-line error."""
    if weights is None:
        return None
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if not isinstance(weights, str):
        raise VitalError(f"weights must be 'default', None (random), a weights name or a file path, got {weights!r}")
    return None if weights.lower() == "none" else weights


def hub_checkpoint_path(url: str) -> Path:
    """Where torch.hub keeps the file for `url`: the only place torchvision weights are read from."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def reason(e: BaseException) -> str:
    """The first line of an exception, without terminal colour codes and without torch's advice to unpickle with
    weights_only=False (which would run code from the file: never passed on)."""
    lines = [ln.strip() for ln in _ANSI.sub("", str(e)).splitlines() if ln.strip()]
    lines = [ln for ln in lines if "weights_only" not in ln and "WeightsUnpickler" not in ln] or [type(e).__name__]
    return lines[0][:200]


def weights_file(path: Path, name: str) -> Path:
    if path.is_dir():
        raise VitalError(f"--weights {path} is a folder; give the checkpoint file for {name}")
    if not path.is_file():
        raise VitalError(f"weights file {path} does not exist; give the path of a checkpoint for {name}, or "
                         "--weights default")
    return path


def read_state_dict(path: Path) -> dict[str, Any]:
    """A state dict from a checkpoint file, read without running code from it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file, or a pickle that would need to run code
        raise VitalError(f"cannot read weights file {path} as a PyTorch state dict ({reason(e)}); replace it "
                         "with a valid checkpoint") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise VitalError(f"weights file {path} does not hold a state dict (a mapping of names to tensors)")
    return state


def load_state(module: nn.Module, state: dict[str, Any], path: Path, name: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise VitalError(f"weights in {path} do not fit {name}: {reason(e)}") from e


