"""LRP rules, one small `Step` per operation of the execution chain.

A step replays its module's forward (storing what its rule needs) and maps the relevance of its output back to its
input. Rules never touch the model's parameters: positive and negative weight parts are computed functionally from
detached weights and cached until the weights change. Everything here runs under `torch.no_grad()`.

Sign handling: the z+ rule is written for non-negative inputs (after a ReLU). Where a layer's input can be negative
(the image, a linear-bottleneck block output, a BatchNorm output), the rule keeps only positive contributions,
W+ a+ + W- a- (alpha=1, beta=0), which equals the plain z+ rule when a >= 0. `propagate_sign` decides this once, when
the chain is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vital.relevance.zplus import EPS, ConvGeometry, crop


class Step:
    """One operation on the chain: replays the forward and propagates relevance backwards."""

    name: str | None = None  # dotted module path; None for functional operations (never captured)
    eps: float = EPS  # the stabiliser; `configure` sets it for a whole chain

    def children(self) -> list[list[Step]]:
        """The step lists inside this step (blocks), for passes over a whole chain."""
        return []

    def forward(self, x: torch.Tensor, keep: bool) -> tuple[torch.Tensor, Any]:
        """Output and, when `keep`, the context that `relevance` needs."""
        raise NotImplementedError

    def relevance(self, r: torch.Tensor, ctx: Any) -> torch.Tensor:
        """Relevance of the input, given the relevance `r` of the output."""
        raise NotImplementedError

    def propagate_sign(self, nonneg_in: bool) -> bool:
        """Whether the output is non-negative when the input is (`nonneg_in`); rules record what they need."""
        return nonneg_in


class Pass(Step):
    """Relevance passes unchanged: BatchNorm, Dropout, Identity, activations (ReLU, ReLU6, SiLU, Swish), SE gates."""

    def __init__(self, name: str | None, fn, nonneg_out: bool | None):
        self.name, self.fn, self.nonneg_out = name, fn, nonneg_out  # nonneg_out None: keeps the input's sign

    def forward(self, x, keep):
        return self.fn(x), None

    def relevance(self, r, ctx):
        return r

    def propagate_sign(self, nonneg_in):
        return nonneg_in if self.nonneg_out is None else self.nonneg_out


class Flatten(Step):
    """(B, C, 1, 1) or (B, C, H, W) to (B, C*H*W); relevance is reshaped back."""

    def __init__(self, name: str | None = None):
        self.name = name

    def forward(self, x, keep):
        return x.flatten(1), x.shape

    def relevance(self, r, shape):
        return r.reshape(shape)


class Pad(Step):
    """Zero padding: relevance of the padded border is dropped (it is zero: padding carries no contribution)."""

    def __init__(self, name: str | None, pad: Sequence[int]):
        self.name, self.pad = name, tuple(int(p) for p in pad)  # (left, right, top, bottom), as F.pad takes it

    def forward(self, x, keep):
        return F.pad(x, self.pad), None

    def relevance(self, r, ctx):
        return crop(r, self.pad)


def _version(t: torch.Tensor | None) -> tuple | None:
    return None if t is None else (t.data_ptr(), t._version, t.dtype)


def batchnorm_scale(bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """gamma / sqrt(running_var + eps) per channel: the factor a following BatchNorm applies to a conv's output."""
    assert bn.running_var is not None  # chains fold only BatchNorms with running statistics
    var = bn.running_var.detach()
    scale = torch.rsqrt(var + bn.eps)
    return scale * bn.weight.detach() if bn.weight is not None else scale


def fold_batchnorm(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of one convolution equal to bn(conv(x)) in eval mode (the canonization zennit applies)."""
    scale = batchnorm_scale(bn)
    assert bn.running_mean is not None
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(scale)
    shift = bn.bias.detach() if bn.bias is not None else torch.zeros_like(scale)
    return conv.weight.detach() * scale.view(-1, 1, 1, 1), (bias - bn.running_mean.detach()) * scale + shift


def epsilon_ratio(r: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """r / (z + eps sign(z)), sign(0) = 1: the epsilon rule's share of each output's relevance per unit of its
    pre-activation (every contribution, negative ones and the bias included)."""
    return r / (z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype))


class _PosNeg:
    """Cached W+ / W- / b+ of one layer, recomputed when the weights change (device move, load, fine-tuning).
    With a BatchNorm folded in (`bn`), W is the folded weight and no bias is kept: the folded bias is a constant
    shift that the z+ rule would let absorb relevance, and the rule is to conserve it."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, keep_bias: bool):
        self.layer, self.keep_bias = layer, keep_bias
        self.bn: nn.modules.batchnorm._BatchNorm | None = None
        self.key: tuple | None = None
        self.wp = self.w2 = torch.empty(0)
        self.wn: torch.Tensor | None = None
        self.bp: torch.Tensor | None = None

    def get(self, need_neg: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        w: torch.Tensor = self.layer.weight
        b: torch.Tensor | None = self.layer.bias
        bn = self.bn
        key = (_version(w), _version(b), need_neg) + (() if bn is None else (
            _version(bn.weight), _version(bn.running_var)))
        if key != self.key:
            w = w.detach()
            if bn is not None:
                w = w * batchnorm_scale(bn).to(w.dtype).view(-1, *([1] * (w.dim() - 1)))
                b = None
            self.w2 = w.square()
            self.wp = w.clamp(min=0)
            self.wn = w.clamp(max=0) if need_neg else None
            self.bp = b.detach().clamp(min=0) if (b is not None and self.keep_bias) else None
            self.key = key
        return self.wp, self.wn, self.bp


class Conv(Step):
    """Conv2d by the z+ rule of `vital.relevance.zplus`. Groups, strides, dilation and 'same' padding (explicit,
    or a static padding module applied before the conv) are supported. With `fallback` (set by `configure`), the
    relevance of outputs that have no positive contribution at all goes back by the w^2 rule instead of being
    dropped, so that a conv conserves relevance."""

    fallback = False
    rule = "z+"  # or "epsilon" (set by `configure` from the rule map)

    def __init__(self, name: str | None, conv: nn.Conv2d, pre_pad: Sequence[int] | None = None):
        self.name, self.conv = name, conv
        padding: str | tuple[int, ...] = conv.padding
        if isinstance(padding, str):  # 'valid' or 'same': made explicit so that the adjoint can be written
            pre_pad = conv._reversed_padding_repeated_twice if padding == "same" else None
            padding = (0, 0)
        self.geometry = ConvGeometry.of(conv.weight, conv.stride, padding, conv.dilation, conv.groups, pre_pad)
        self.pre_pad = self.geometry.pre_pad
        self.signed = True
        self.params = _PosNeg(conv, keep_bias=True)

    def fold(self, bn: nn.modules.batchnorm._BatchNorm | None) -> None:
        """Use the BatchNorm that follows this conv in the rule's weights (None: undo)."""
        self.params.bn = bn
        self.params.key = None

    def forward(self, x, keep):
        if self.pre_pad:
            x = F.pad(x, self.pre_pad)
        y = self.geometry.conv(x, self.conv.weight, self.conv.bias)
        return y, (x if keep else None)

    def relevance(self, r, a):
        if self.rule == "epsilon":
            rin = a * self.geometry.adjoint(epsilon_ratio(r, self.geometry.conv(a, self.conv.weight, self.conv.bias),
                                                          self.eps), self.conv.weight, a.shape[-2:])
            return crop(rin, self.pre_pad) if self.pre_pad else rin
        wp, wn, bp = self.params.get(self.signed)
        geo = self.geometry
        r_flat = None
        z = geo.z(a, wp, wn if self.signed else None, bp)
        if self.fallback:
            r, r_flat = self._split_dead(r, z)
        gp, gn = geo.back(r / (z + self.eps), wp, wn if self.signed else None, a.shape[-2:])
        if gn is not None:
            rin = a.clamp(min=0) * gp + a.clamp(max=0) * gn
        else:
            rin = a * gp
        if r_flat is not None:
            rin = rin + self._w_square(r_flat, a)
        return crop(rin, self.pre_pad) if self.pre_pad else rin

    def _split_dead(self, r: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Relevance of outputs with no positive contribution (z+ below the stabiliser: a filter whose weights
        are all negative on non-negative inputs, or a window of zeros) is split off for the w^2 rule."""
        dead = z <= self.eps
        if not bool((dead & (r != 0)).any()):
            return r, None
        return r.masked_fill(dead, 0), r.masked_fill(~dead, 0)

    def _w_square(self, r: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The w^2 rule: R_j = sum_k w_jk^2 / (sum_j' w_j'k^2) R_k over the real (unpadded) inputs of each output."""
        w2 = self.params.w2
        inside = torch.ones_like(a)
        if self.pre_pad:
            inside = F.pad(crop(inside, self.pre_pad), self.pre_pad)
        denom = self.geometry.conv(inside, w2, None)
        return inside * self.geometry.adjoint(r / denom.clamp(min=torch.finfo(r.dtype).tiny), w2, a.shape[-2:])

    def propagate_sign(self, nonneg_in):
        self.signed = not nonneg_in
        return False


class Linear(Step):
    """Linear by the z+ rule with the bias zeroed (as the authors' code), or by the epsilon rule."""

    rule = "z+"  # or "epsilon" (set by `configure` from the rule map)

    def __init__(self, name: str | None, linear: nn.Linear):
        self.name, self.linear = name, linear
        self.signed = True
        self.params = _PosNeg(linear, keep_bias=False)

    def forward(self, x, keep):
        return self.linear(x), (x if keep else None)

    def relevance(self, r, a):
        if self.rule == "epsilon":
            return a * (epsilon_ratio(r, self.linear(a), self.eps) @ self.linear.weight)
        wp, wn, _ = self.params.get(self.signed)
        if self.signed:
            ap, an = a.clamp(min=0), a.clamp(max=0)
            s = r / (F.linear(ap, wp) + F.linear(an, wn) + self.eps)
            return ap * (s @ wp) + an * (s @ wn)
        s = r / (F.linear(a, wp) + self.eps)
        return a * (s @ wp)

    def propagate_sign(self, nonneg_in):
        self.signed = not nonneg_in
        return False


class Pool(Step):
    """Average pooling by the z rule; MaxPool2d is replayed exactly but its relevance is redistributed as by an
    AvgPool2d of the same kernel, stride and padding (as the authors' code). Only the positive part of the input receives
    relevance, which is the plain z rule for the usual non-negative input and keeps z > 0 otherwise."""

    def __init__(self, name: str | None, fn, kernel, stride, padding, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None):
        self.name, self.fn = name, fn
        pair = nn.modules.utils._pair
        self.kernel = list(pair(kernel))
        self.stride = list(pair(stride if stride is not None else kernel))
        self.padding = list(pair(padding))
        self.ceil_mode, self.count_include_pad, self.divisor_override = ceil_mode, count_include_pad, divisor_override

    def forward(self, x, keep):
        return self.fn(x), (x if keep else None)

    def relevance(self, r, a):
        ap = a.clamp(min=0)
        args = (self.kernel, self.stride, self.padding, self.ceil_mode, self.count_include_pad, self.divisor_override)
        s = r / (F.avg_pool2d(ap, *args) + self.eps)
        return ap * torch.ops.aten.avg_pool2d_backward(s, ap, *args)


class AdaptivePool(Step):
    """Adaptive average pooling by the z rule (positive part of the input, as `Pool`)."""

    def __init__(self, name: str | None, output_size):
        self.name, self.output_size = name, output_size

    def forward(self, x, keep):
        return F.adaptive_avg_pool2d(x, self.output_size), (x if keep else None)

    def relevance(self, r, a):
        ap = a.clamp(min=0)
        s = r / (F.adaptive_avg_pool2d(ap, self.output_size) + self.eps)
        return ap * torch.ops.aten._adaptive_avg_pool2d_backward(s, ap)
