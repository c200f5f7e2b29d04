"""DeepInversion's feature-statistics prior (Yin et al., CVPR 2020, "Dreaming to Distill"): the synthetic batch
should reproduce, at the input of every BatchNorm2d, the statistics stored in its running buffers.

    L = sum_l w_l * ( ||mu_l - running_mean_l||_2 + ||var_l - running_var_l||_2 )

mu_l and var_l are the per-channel mean and biased variance of the BN layer's input over (N, H, W) of the whole batch,
the Euclidean norms run over channels, and w_l = 1 except for the first BN layer (in `named_modules` order, which is
the forward order of sequential CNNs), whose weight is `first_multiplier`. The paper's equation is
`first_multiplier=1`; DeepInversion's released ImageNet recipe uses 10, the default here.

The statistics are batch statistics, exactly as in DeepInversion: when several targets share a batch the loss
couples their samples (each image is pushed so that the batch as a whole matches the running statistics), and it is
one number for the batch, not one per sample. This is inherent to the method; run one target per batch to avoid it.
"""

from __future__ import annotations

import torch
from torch import nn

from vital.errors import VitalError
from vital.objectives.base import Term, Views

DEFAULT_FIRST_MULTIPLIER = 10.0


class BatchNormStats(Term):
    """Hooks on every BatchNorm2d of `model` that record the statistics of its input in each forward; `loss()` reads
    them after the forward. The hooks exist only inside `with` (or between `attach()` and `detach()`).

    As a term, each image of a batch of B gets weight * loss / B: the batch's losses sum to weight * loss, one
    number for the batch (see the module's note: the statistic couples the samples)."""

    name = "batchnorm_stats"

    def __init__(self, model: nn.Module, *, first_multiplier: float = DEFAULT_FIRST_MULTIPLIER,
                 name: str | None = None, weight: float = 1.0):
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        label = name or type(model).__name__
        if not self.layers:
            raise VitalError(f"deepinversion needs BatchNorm layers; {label} has none; use method vital, maco or "
                             "fourier")
        if any(m.running_mean is None or m.running_var is None for m in self.layers):
            raise VitalError(f"deepinversion needs BatchNorm running statistics; {label} has BatchNorm2d layers with "
                             "track_running_stats=False; use method vital, maco or fourier")
        self.model, self.first_multiplier, self.weight = model, first_multiplier, float(weight)
        self._stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list = []

    def attach(self) -> None:
        if self._handles:
            return
        self._handles = [self.model.register_forward_pre_hook(self._clear)]
        self._handles += [m.register_forward_pre_hook(self._recorder(i)) for i, m in enumerate(self.layers)]

    def _clear(self, module: nn.Module, args: tuple) -> None:
        self._stats.clear()  # a new forward of the model: forget the previous batch

    def _recorder(self, index: int):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            self._stats[index] = (x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False))

        return hook

    def loss(self) -> torch.Tensor:
        """The statistics loss of the last forward (a scalar, differentiable with respect to the input)."""
        if not self._handles:
            raise VitalError("the BatchNorm hooks are not attached: use the term inside `with` (or call attach())")
        if not self._stats:
            raise VitalError("no BatchNorm layer ran since the hooks were installed; run a forward of the model "
                             "before calling loss()")
        if any(self.layers[i].training for i in self._stats):
            raise VitalError("BatchNorm layers are in training mode, so their running statistics move with each "
                             "batch; call model.eval() first")
        total = None
        for i, (mean, var) in sorted(self._stats.items()):
            bn = self.layers[i]
            assert bn.running_mean is not None and bn.running_var is not None  # checked when the term was made
            term = (torch.linalg.vector_norm(mean - bn.running_mean.to(mean.dtype))
                    + torch.linalg.vector_norm(var - bn.running_var.to(var.dtype)))
            if i == 0:
                term = term * self.first_multiplier
            total = term if total is None else total + term
        assert total is not None
        return total

    def __call__(self, v: Views) -> torch.Tensor:
        return (self.weight * self.loss() / v.batch).expand(v.batch)

    def state(self) -> dict:
        """Hyperparameters for the run record."""
        return {"name": self.name, "layers": len(self.layers), "first_multiplier": self.first_multiplier,
                "weight": self.weight}

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._stats.clear()
