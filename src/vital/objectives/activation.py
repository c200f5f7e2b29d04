"""Activation-maximisation objectives of the baselines (MACO, Fourier, DeepInversion), one loss per sample so that a
batch can hold several targets. Losses are negated activations: lower is better, as every objective of the loop."""

from __future__ import annotations

import torch

from vital.errors import VitalError

REDUCTIONS = ("mean", "sum", "max")


def _per_sample_index(index: torch.Tensor, batch: int, count: int, what: str) -> torch.Tensor:
    index = torch.as_tensor(index).long().reshape(-1)
    if index.numel() != batch:
        raise VitalError(f"one {what} per sample is needed: got {index.numel()} for a batch of {batch}")
    if index.numel() and (index.min() < 0 or index.max() >= count):
        raise VitalError(f"{what} {index.tolist()} out of range: the layer has {count} (valid: 0..{count - 1})")
    return index


def _reduce(values: torch.Tensor, reduce: str) -> torch.Tensor:
    """Reduce (B, P) over positions."""
    if reduce == "mean":
        return values.mean(dim=1)
    if reduce == "sum":
        return values.sum(dim=1)
    if reduce == "max":
        return values.amax(dim=1)
    raise VitalError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")


def class_logit(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """-logits[b, classes[b]] for `logits` (B, K): (B,)."""
    if logits.dim() != 2:
        raise VitalError(f"class logits must be (B, classes), got shape {tuple(logits.shape)}")
    idx = _per_sample_index(classes, logits.shape[0], logits.shape[1], "class").to(logits.device)
    return -logits.gather(1, idx[:, None]).squeeze(1)


def channel_activation(act: torch.Tensor, channels: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """-reduce over positions of act[b, channels[b]] for `act` (B, C), (B, C, P) or (B, C, H, W): (B,)."""
    if act.dim() < 2:
        raise VitalError(f"activations must be (B, C, ...), got shape {tuple(act.shape)}")
    flat = act.reshape(act.shape[0], act.shape[1], -1)
    idx = _per_sample_index(channels, act.shape[0], act.shape[1], "channel").to(act.device)
    picked = flat.gather(1, idx[:, None, None].expand(-1, 1, flat.shape[2])).squeeze(1)
    return -_reduce(picked, reduce)


def direction(act: torch.Tensor, vectors: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """-reduce over positions of <act[b, :, p], v_b> for `act` (B, C, ...) and `vectors` (C,) shared or (B, C) one
    per sample: (B,). The vectors are used as given (normalise them first for a unit direction)."""
    if act.dim() < 2:
        raise VitalError(f"activations must be (B, C, ...), got shape {tuple(act.shape)}")
    batch, chans = act.shape[:2]
    v = vectors.to(device=act.device, dtype=act.dtype)
    if v.dim() == 1:
        v = v.expand(batch, -1)
    if tuple(v.shape) != (batch, chans):
        raise VitalError(f"direction vectors must be ({chans},) or ({batch}, {chans}) for activations of shape "
                         f"{tuple(act.shape)}, got {tuple(vectors.shape)}")
    dots = torch.einsum("bcp,bc->bp", act.reshape(batch, chans, -1), v)
    return -_reduce(dots, reduce)
