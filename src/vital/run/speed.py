"""GPU speed options for long jobs: channels-last memory layout, bf16/fp16 autocast and `torch.compile`.

Each option changes only how the network computes, never what: `accelerate` measures that by comparing the
logits and the input gradient of a seeded batch before and after, and refuses an option whose deviation exceeds
its stated tolerance (relative L2 error, ||after - before|| / ||before||):

- channels-last: 1e-4 (the same arithmetic in another memory order; only the summation order differs),
- torch.compile: 1e-4 (fused kernels; float32 throughout),
- fp16 autocast: 2e-2, bf16 autocast: 1e-1 (8 mantissa bits: input gradients through a deep net move by several
  percent; for speed, not for bit-exact reruns).

Autocast is a context that must surround the run (`autocast(model, options)`); the other two change the module
in place, reversibly: `apply` and `accelerate` return an `Acceleration`, a context manager (or call `remove()`) that
takes its hook off and puts every parameter and buffer back in its dtype and memory layout, so the model leaves
as it came. `accelerate` undoes its own changes when its check refuses them. `torch.compile` keeps the module's
layer names and hooks (`nn.Module.compile`), so feature capture and relevance passes work unchanged; its first
steps are slow while kernels are compiled.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
from torch import nn

from vital.errors import VitalError
from vital.models.zoo import VisionModel

TOLERANCE = {"channels_last": 1e-4, "compile": 1e-4, "fp16": 2e-2, "bf16": 1e-1}
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class SpeedOptions:
    channels_last: bool = False
    autocast: str | None = None  # "bf16" | "fp16" | None
    compile: bool = False

    def __post_init__(self) -> None:
        from vital import validate

        validate.flag("channels_last", self.channels_last)
        validate.flag("compile", self.compile)
        if self.autocast not in (None, *AUTOCAST_DTYPES):
            raise VitalError(f"unknown autocast dtype '{self.autocast}'; use bf16 or fp16 (or leave it off)")

    @property
    def any(self) -> bool:
        return self.channels_last or self.autocast is not None or self.compile

    @property
    def tolerance(self) -> float:
        """The loosest tolerance among the options in use (0 when none is)."""
        used = [k for k in ("channels_last", "compile") if getattr(self, k)]
        used += [self.autocast] if self.autocast else []
        return max((TOLERANCE[k] for k in used), default=0.0)

    def as_dict(self) -> dict:
        return asdict(self)


def _to_channels_last(_module, args):
    x = args[0]
    if torch.is_tensor(x) and x.dim() == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return None


class Acceleration:
    """Speed options applied to `model.module`, and how to undo them: the channels-last input hook's handle and
    every parameter's and buffer's dtype and strides from before. Use it as a context manager or call `remove()`."""

    def __init__(self, model: VisionModel, options: SpeedOptions):
        self.model, self.options = model, options
        self.report: dict = {"options": options.as_dict(), "tolerance": options.tolerance}  # for the run record
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._layout: list[tuple[nn.Module, str, bool, torch.dtype, tuple[int, ...]]] = []
        self._compiled: bool | None = None
        self.applied = False

    def apply(self) -> Acceleration:
        """Convert the module in place: channels-last weights and inputs, then compilation."""
        if self.applied:
            raise VitalError("these speed options are applied already; remove() them first")
        module = self.model.module
        self._layout = [(owner, name, is_param, t.dtype, t.stride()) for owner in module.modules()
                        for is_param, tensors in ((True, owner._parameters), (False, owner._buffers))
                        for name, t in tensors.items() if t is not None]
        self._compiled = module._compiled_call_impl is not None
        self.applied = True
        if self.options.channels_last:
            module.to(memory_format=torch.channels_last)
            self._handles.append(module.register_forward_pre_hook(_to_channels_last))
        if self.options.compile:
            module.compile()
        return self

    def remove(self) -> None:
        """Undo `apply`: remove the hook, restore dtypes and memory layouts, drop the compiled forward."""
        if not self.applied:
            return
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        with torch.no_grad():
            for owner, name, is_param, dtype, stride in self._layout:
                tensor = getattr(owner, name, None)
                if tensor is None or (tensor.dtype == dtype and tensor.stride() == stride):
                    continue
                data = torch.empty_strided(tensor.shape, stride, dtype=dtype, device=tensor.device).copy_(tensor)
                if is_param:
                    tensor.data = data
                else:
                    owner._buffers[name] = data
        self._layout = []
        if not self._compiled:
            self.model.module._compiled_call_impl = None
        self.applied = False

    def __enter__(self) -> Acceleration:
        if not self.applied:
            self.apply()
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def apply(model: VisionModel, options: SpeedOptions) -> Acceleration:
    """Convert the module in place (channels-last weights and inputs, then compilation), unchecked; the returned
    `Acceleration` undoes it (`with apply(model, options): ...` or `.remove()`)."""
    return Acceleration(model, options).apply()


def autocast(model: VisionModel, options: SpeedOptions) -> contextlib.AbstractContextManager:
    """The autocast context for a run on `model`'s device (a no-op context when autocast is off)."""
    if options.autocast is None:
        return contextlib.nullcontext()
    dtype = AUTOCAST_DTYPES[options.autocast]
    device = model.device.type
    if device == "cpu" and dtype == torch.float16:
        raise VitalError("fp16 autocast needs a GPU; use --autocast bf16 on the CPU")
    return torch.autocast(device_type=device, dtype=dtype)


def _probe(model: VisionModel, options: SpeedOptions, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    with autocast(model, options):
        logits = model.module(x)
    logits = logits.float()
    (grad,) = torch.autograd.grad(logits.square().sum(), x)
    return logits.detach(), grad


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| over the whole tensor."""
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-12)).item()


def accelerate(model: VisionModel, options: SpeedOptions, check: bool = True, seed: int = 0,
               enforce: bool = True) -> Acceleration:
    """Apply `options` to `model` and, with `check`, verify on a seeded batch of two images that logits and input
    gradients moved by at most the options' tolerance. Returns the applied `Acceleration` (a context manager that
    undoes it); its `report` holds the measured deviations for the run record. A refused option is undone before
    the error is raised; `enforce=False` measures and reports without refusing (benchmarks)."""
    acceleration = Acceleration(model, options)
    if not options.any:
        return acceleration.apply()
    x = torch.randn(2, 3, model.size, model.size, generator=torch.Generator(device="cpu").manual_seed(seed))
    x = x.to(device=model.device, dtype=model.dtype)
    before = _probe(model, SpeedOptions(), x) if check else None
    acceleration.apply()
    if before is None:
        return acceleration
    try:
        after = _probe(model, options, x)
        logits, grad = _relative(after[0], before[0]), _relative(after[1], before[1])
        acceleration.report.update(logits_deviation=logits, gradient_deviation=grad)
        if enforce and max(logits, grad) > options.tolerance:
            raise VitalError(f"speed options {options.as_dict()} change {model.name}'s outputs by {logits:.2g} and "
                             f"its input gradients by {grad:.2g} (relative), above the tolerance "
                             f"{options.tolerance:g}; turn the option off (e.g. drop --autocast)")
    except BaseException:
        acceleration.remove()
        raise
    return acceleration
