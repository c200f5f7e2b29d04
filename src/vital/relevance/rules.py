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

EPS = 1e-5  # stabiliser of every z / z+ denominator (SPEC §8); rho's epsilon too


class Step:
    """One operation on the chain: replays the forward and propagates relevance backwards."""

    name: str | None = None  # dotted module path; None for functional operations (never captured)

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


def crop(r: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    """Undo F.pad(x, (left, right, top, bottom)) on the last two dimensions."""
    left, right, top, bottom = pad
    h, w = r.shape[-2:]
    return r[..., top:h - bottom, left:w - right]


class _PosNeg:
    """Cached W+ / W- / b+ of one layer, recomputed when the weights change (device move, load, fine-tuning)."""

    def __init__(self, layer: nn.Module, keep_bias: bool):
        self.layer, self.keep_bias = layer, keep_bias
        self.key: tuple | None = None
        self.wp = self.wn = self.bp = None

    def get(self, need_neg: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        w, b = self.layer.weight, self.layer.bias
        key = (w.data_ptr(), w._version, w.dtype, None if b is None else (b.data_ptr(), b._version))
        if key != self.key:
            w = w.detach()
            self.wp = w.clamp(min=0)
            self.wn = w.clamp(max=0) if need_neg else None
            self.bp = b.detach().clamp(min=0) if (b is not None and self.keep_bias) else None
            self.key = key
        return self.wp, self.wn, self.bp


class Conv(Step):
    """Conv2d by the z+ rule: z = conv(a; W+, b+) + eps, R_in = a * conv_transpose(R / z; W+). Groups, strides,
    dilation and 'same' padding (explicit, or a static padding module applied before the conv) are supported."""

    def __init__(self, name: str | None, conv: nn.Conv2d, pre_pad: Sequence[int] | None = None):
        self.name, self.conv = name, conv
        self.padding = conv.padding
        if isinstance(self.padding, str):  # 'valid' or 'same': made explicit so that the adjoint can be written
            pre_pad = conv._reversed_padding_repeated_twice if self.padding == "same" else None
            self.padding = (0, 0)
        self.pre_pad = tuple(int(p) for p in pre_pad) if pre_pad and any(pre_pad) else None
        self.padding = tuple(self.padding)
        stride = tuple(conv.stride)  # EfficientNet-Lite's convs may store a one-element list
        self.stride = stride * 2 if len(stride) == 1 else stride
        self.dilation, self.groups = tuple(conv.dilation), conv.groups
        self.signed = True
        self.params = _PosNeg(conv, keep_bias=True)

    def forward(self, x, keep):
        if self.pre_pad:
            x = F.pad(x, self.pre_pad)
        y = F.conv2d(x, self.conv.weight, self.conv.bias, self.stride, self.padding, self.dilation, self.groups)
        return y, (x if keep else None)

    def _conv(self, a, w, b):
        return F.conv2d(a, w, b, self.stride, self.padding, self.dilation, self.groups)

    def _adjoint(self, s: torch.Tensor, w: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        k = w.shape[-2:]
        extra = [size[i] - ((s.shape[2 + i] - 1) * self.stride[i] - 2 * self.padding[i]
                            + self.dilation[i] * (k[i] - 1) + 1) for i in range(2)]
        return F.conv_transpose2d(s, w, None, self.stride, self.padding, extra, self.groups, self.dilation)

    def relevance(self, r, a):
        wp, wn, bp = self.params.get(self.signed)
        size = a.shape[-2:]
        if self.signed:
            ap, an = a.clamp(min=0), a.clamp(max=0)
            s = r / (self._conv(ap, wp, bp) + self._conv(an, wn, None) + EPS)
            rin = ap * self._adjoint(s, wp, size) + an * self._adjoint(s, wn, size)
        else:
            s = r / (self._conv(a, wp, bp) + EPS)
            rin = a * self._adjoint(s, wp, size)
        return crop(rin, self.pre_pad) if self.pre_pad else rin

    def propagate_sign(self, nonneg_in):
        self.signed = not nonneg_in
        return False


class Linear(Step):
    """Linear by the z+ rule with the bias zeroed (SPEC §4)."""

    def __init__(self, name: str | None, linear: nn.Linear):
        self.name, self.linear = name, linear
        self.signed = True
        self.params = _PosNeg(linear, keep_bias=False)

    def forward(self, x, keep):
        return self.linear(x), (x if keep else None)

    def relevance(self, r, a):
        wp, wn, _ = self.params.get(self.signed)
        if self.signed:
            ap, an = a.clamp(min=0), a.clamp(max=0)
            s = r / (F.linear(ap, wp) + F.linear(an, wn) + EPS)
            return ap * (s @ wp) + an * (s @ wn)
        s = r / (F.linear(a, wp) + EPS)
        return a * (s @ wp)

    def propagate_sign(self, nonneg_in):
        self.signed = not nonneg_in
        return False


class Pool(Step):
    """Average pooling by the z rule; MaxPool2d is replayed exactly but its relevance is redistributed as by an
    AvgPool2d of the same kernel, stride and padding (SPEC §4). Only the positive part of the input receives
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
        s = r / (F.avg_pool2d(ap, *args) + EPS)
        return ap * torch.ops.aten.avg_pool2d_backward(s, ap, *args)


class AdaptivePool(Step):
    """Adaptive average pooling by the z rule (positive part of the input, as `Pool`)."""

    def __init__(self, name: str | None, output_size):
        self.name, self.output_size = name, output_size

    def forward(self, x, keep):
        return F.adaptive_avg_pool2d(x, self.output_size), (x if keep else None)

    def relevance(self, r, a):
        ap = a.clamp(min=0)
        s = r / (F.adaptive_avg_pool2d(ap, self.output_size) + EPS)
        return ap * torch.ops.aten._adaptive_avg_pool2d_backward(s, ap)


def run_forward(steps: Sequence[Step], x: torch.Tensor, keep: bool) -> tuple[torch.Tensor, list]:
    ctxs = []
    for step in steps:
        x, ctx = step.forward(x, keep)
        ctxs.append(ctx)
    return x, ctxs


def run_relevance(steps: Sequence[Step], r: torch.Tensor, ctxs: list) -> torch.Tensor:
    for step, ctx in zip(reversed(steps), reversed(ctxs), strict=True):
        r = step.relevance(r, ctx)
    return r


def propagate_chain(steps: Sequence[Step], nonneg: bool) -> bool:
    for step in steps:
        nonneg = step.propagate_sign(nonneg)
    return nonneg


class Serial(Step):
    """A block without a skip connection: its inner steps one after the other."""

    def __init__(self, name: str, steps: list[Step]):
        self.name, self.steps = name, steps

    def forward(self, x, keep):
        return run_forward(self.steps, x, keep)

    def relevance(self, r, ctxs):
        return run_relevance(self.steps, r, ctxs)

    def propagate_sign(self, nonneg_in):
        return propagate_chain(self.steps, nonneg_in)


class Residual(Step):
    """out = post(M(x) + S(x)) with relevance splitting: rho = |M| / (|M| + |S| + eps), R_M = rho R goes back through
    the branch, R_S = (1 - rho) R through the shortcut (empty = identity), R_in = R_M + R_S."""

    def __init__(self, name: str, branch: list[Step], shortcut: list[Step], post: list[Step]):
        self.name, self.branch, self.shortcut, self.post = name, branch, shortcut, post

    def forward(self, x, keep):
        m, mctx = run_forward(self.branch, x, keep)
        s, sctx = run_forward(self.shortcut, x, keep)
        y, pctx = run_forward(self.post, m + s, keep)
        if not keep:
            return y, None
        ma, sa = m.abs(), s.abs()
        return y, (ma / (ma + sa + EPS), mctx, sctx, pctx)

    def relevance(self, r, ctx):
        rho, mctx, sctx, pctx = ctx
        r = run_relevance(self.post, r, pctx)
        rm = rho * r
        return run_relevance(self.branch, rm, mctx) + run_relevance(self.shortcut, r - rm, sctx)

    def propagate_sign(self, nonneg_in):
        m = propagate_chain(self.branch, nonneg_in)
        s = propagate_chain(self.shortcut, nonneg_in)
        return propagate_chain(self.post, m and s)


class DenseBlock(Step):
    """torchvision _DenseBlock: each layer reads the concatenation of all earlier features and the block returns
    the concatenation of all of them. Relevance of the output is split by channel; going backwards, each layer's
    share flows through its own chain to the concatenated input and is added to the earlier features' shares."""

    def __init__(self, name: str, layers: list[list[Step]]):
        self.name, self.layers = name, layers

    def forward(self, x, keep):
        feats, ctxs = [x], []
        for chain in self.layers:
            new, ctx = run_forward(chain, torch.cat(feats, 1), keep)
            feats.append(new)
            ctxs.append(ctx)
        return torch.cat(feats, 1), ([f.shape[1] for f in feats], ctxs) if keep else None

    def relevance(self, r, ctx):
        sizes, ctxs = ctx
        parts = list(r.split(sizes, 1))
        for i in range(len(self.layers) - 1, -1, -1):
            rin = run_relevance(self.layers[i], parts[i + 1], ctxs[i])
            for j, p in enumerate(rin.split(sizes[:i + 1], 1)):
                parts[j] = parts[j] + p
        return parts[0]

    def propagate_sign(self, nonneg_in):
        nonneg = nonneg_in
        for chain in self.layers:
            nonneg = propagate_chain(chain, nonneg) and nonneg
        return nonneg
