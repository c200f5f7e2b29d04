"""LRP for any architecture as a modified gradient: transformers (ViT, Swin), ConvNeXt, and every CNN whose modules
the rule chain (`vital.relevance.chain`) does not list.

Relevance R of a tensor t is written R = t * G, where G is what autograd carries backwards. Through a linear
operation (a linear layer, a sum, a reshape, a residual join, attention weights times values) the ordinary gradient
of G is then exactly LRP-0: R_x = x * W^T (R_y / y), with biases absorbing their share. The rules of the published
AttnLRP (Achtibat et al., ICML 2024) and CP-LRP (Ali et al., ICML 2022) are changes of that gradient, made here
with a `TorchFunctionMode` during one forward of the real model, so the model is never modified, patched or hooked
beyond the capture of its outputs:

- softmax (attention): its output is held constant (CP-LRP), so relevance reaches the values and not the queries
  and keys; `scaled_dot_product_attention` and `multi_head_attention_forward` are replayed with explicit, constant
  attention weights (same values as the fused kernels);
- LayerNorm and GroupNorm: the standard deviation is held constant, leaving a linear map (the mean subtraction
  stays);
- GELU, SiLU, Hardswish, ReLU6 (element-wise): the identity rule, R_in = R_out, as the factor f(x)/x held constant;
  sigmoid gates (squeeze-excitation) are held constant;
- BatchNorm: the identity rule (relevance passes unchanged, as the rule chain does without folding);
- Conv2d: the z+ rule of `vital.relevance.zplus` on the positive and negative parts of its input (alpha=1,
  beta=0), the one the rule chain uses: G = where(x > 0, W+^T s, W-^T s) with s = R_y / (z+ + eps).

Max pooling keeps its gradient (the winning input takes the relevance).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from vital.errors import VitalError
from vital.features import LayoutProbe, capture, has_inplace, resolve_modules
from vital.layout import Layout
from vital.relevance import readout
from vital.relevance.readout import Readout
from vital.relevance.zplus import EPS, ConvGeometry, crop


def _held(factor: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x * factor with the factor constant for the gradient: relevance passes an element-wise map unchanged."""
    return x * factor.detach()


def _gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    if approximate == "tanh":
        factor = 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x.pow(3))))
    else:
        factor = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    return _held(factor, x)


def _silu(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    return _held(torch.sigmoid(x), x)


def _hardswish(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    return _held(F.relu6(x + 3) / 6, x)


def _relu6(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    return _held(torch.where(x > 0, x.clamp(max=6) / x.clamp(min=torch.finfo(x.dtype).tiny), 0), x)


def _normalise(x: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
    mean = x.mean(dims, keepdim=True)
    std = torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + eps)
    return (x - mean) / std.detach()


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    y = _normalise(x, tuple(range(-len(normalized_shape), 0)), eps)
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


def _group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    b, c = x.shape[:2]
    y = _normalise(x.reshape(b, num_groups, -1), (2,), eps).reshape(x.shape)
    shape = (1, c) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.view(shape)
    return y + bias.view(shape) if bias is not None else y


class _Identity(torch.autograd.Function):
    """y = f(x) with R_x = R_y: G_x = G_y * y / x (zero where x is zero: it holds no relevance there)."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        return y.clone()

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        ratio = torch.where(x != 0, y / torch.where(x != 0, x, torch.ones_like(x)), torch.zeros_like(x))
        return g * ratio, None


def _batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    y = F.batch_norm(x.detach(), running_mean, running_var, weight, bias, training, momentum, eps)
    return _Identity.apply(x, y)


class _ZPlusConv(torch.autograd.Function):
    """Conv2d whose backward carries G by the z+ rule on the signed input (`vital.relevance.zplus`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.geometry = ConvGeometry.of(weight, stride, padding, dilation, groups)
        y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        ctx.save_for_backward(x, weight, bias, y)
        return y

    @staticmethod
    def backward(ctx, g):
        x, w, b, y = ctx.saved_tensors
        geo: ConvGeometry = ctx.geometry
        a = F.pad(x, geo.pre_pad) if geo.pre_pad else x
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        z = geo.z(a, wp, wn, None if b is None else b.clamp(min=0))
        gp, gn = geo.back((y * g) / (z + EPS), wp, wn, a.shape[-2:], matmul_1x1=False)
        assert gn is not None
        grad = torch.where(a > 0, gp, gn)
        return crop(grad, geo.pre_pad) if geo.pre_pad else grad, None, None, None, None, None, None


def _conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return _ZPlusConv.apply(x, weight.detach(), None if bias is None else bias.detach(), stride, padding, dilation,
                            groups)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
               causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale + mask) held constant, times v: (output, weights)."""
    logits = (q @ k.transpose(-2, -1)) * scale
    if causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        logits = logits.masked_fill(~keep, float("-inf"))
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    weights = torch.softmax(logits, dim=-1).detach()
    return weights @ v, weights


def _sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        rep = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(rep, -3), value.repeat_interleave(rep, -3)
    out, _ = _attention(query, key, value, attn_mask, scale if scale is not None else query.shape[-1] ** -0.5,
                        is_causal)
    return out


def _mha(query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias, bias_k, bias_v,
         add_zero_attn, dropout_p, out_proj_weight, out_proj_bias, training=True, key_padding_mask=None,
         need_weights=True, attn_mask=None, use_separate_proj_weight=False, q_proj_weight=None, k_proj_weight=None,
         v_proj_weight=None, static_k=None, static_v=None, average_attn_weights=True, is_causal=False):
    """`F.multi_head_attention_forward` (sequence first, (L, N, E) or (L, E)) with constant attention weights."""
    if bias_k is not None or bias_v is not None or add_zero_attn or static_k is not None or static_v is not None:
        raise VitalError("LRP of nn.MultiheadAttention supports neither bias_k/bias_v, add_zero_attn nor static "
                         "keys; use relevance='none' for this model")
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
    e = query.shape[-1]
    if use_separate_proj_weight:
        ws = (q_proj_weight, k_proj_weight, v_proj_weight)
    else:
        ws = in_proj_weight.chunk(3)
    bs = in_proj_bias.chunk(3) if in_proj_bias is not None else (None, None, None)
    q, k, v = (F.linear(t, w, b) for t, w, b in zip((query, key, value), ws, bs, strict=True))
    (length, n), s, d = query.shape[:2], key.shape[0], e // num_heads

    def heads(t: torch.Tensor, rows: int) -> torch.Tensor:
        return t.reshape(rows, n * num_heads, d).transpose(0, 1)  # (N*h, rows, d)

    def additive(m: torch.Tensor) -> torch.Tensor:  # here a boolean True masks a key out (SDPA's keeps it)
        return torch.zeros_like(m, dtype=q.dtype).masked_fill(m, float("-inf")) if m.dtype == torch.bool else m.to(q.dtype)

    mask = None
    if attn_mask is not None:
        mask = additive(attn_mask if attn_mask.dim() == 3 else attn_mask.unsqueeze(0))
    if key_padding_mask is not None:
        pad = additive(key_padding_mask.reshape(n, 1, 1, s).expand(n, num_heads, 1, s).reshape(n * num_heads, 1, s))
        mask = pad if mask is None else mask + pad
    out, weights = _attention(heads(q, length), heads(k, s), heads(v, s), mask, d ** -0.5, is_causal and mask is None)
    out = F.linear(out.transpose(0, 1).reshape(length, n, e), out_proj_weight, out_proj_bias)
    if unbatched:
        out = out.squeeze(1)
    if not need_weights:
        return out, None
    weights = weights.reshape(n, num_heads, length, s)
    weights = weights.mean(1) if average_attn_weights else weights
    return out, weights.squeeze(0) if unbatched else weights


def _held_output(fn: Callable) -> Callable:
    def held(*args, **kwargs):
        return fn(*args, **kwargs).detach()

    return held


RULES: dict[Callable, Callable] = {
    F.conv2d: _conv2d,
    F.batch_norm: _batch_norm,
    F.layer_norm: _layer_norm,
    F.group_norm: _group_norm,
    F.gelu: _gelu,
    F.silu: _silu,
    F.hardswish: _hardswish,
    F.relu6: _relu6,
    F.softmax: _held_output(F.softmax),
    torch.softmax: _held_output(torch.softmax),
    torch.Tensor.softmax: _held_output(torch.Tensor.softmax),
    torch.sigmoid: _held_output(torch.sigmoid),
    torch.Tensor.sigmoid: _held_output(torch.Tensor.sigmoid),
    F.hardsigmoid: _held_output(F.hardsigmoid),
    F.scaled_dot_product_attention: _sdpa,
    F.multi_head_attention_forward: _mha,
}


class RuleMode(TorchFunctionMode):
    """Within this mode, the functions of `RULES` run their relevance-rule versions: same values, modified
    gradient (see the module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        rule = RULES.get(func)
        return (rule or func)(*args, **(kwargs or {}))


def _leaf(out: torch.Tensor) -> torch.Tensor:
    """A captured output that the forward does not track yet: relevance flows back to here and no further."""
    return out if out.requires_grad else out.detach().requires_grad_(True)


class ModifiedGradientRelevance:
    """The modified-gradient backend: relevance of one target unit per sample at `layers`, by the rules of the
    module docstring. A call is one forward of the real model under `RuleMode` that stops after the target layer,
    and one backward from the target to the shallowest requested layer. `signed=True` keeps negative relevance
    (for conservation checks); by default the result is its positive part, the evidence for the unit."""

    name = "modified-gradient"
    joint_forward = False

    def __init__(self, model: nn.Module, target_layer: str, layers: Sequence[str], method: str, signed: bool = False):
        self.model, self.target_layer, self.layers, self.method = model, target_layer, list(layers), method
        self.modules = resolve_modules(model, [target_layer, *self.layers])
        self.signed = signed
        self.copy = has_inplace(model)

    def __call__(self, x: torch.Tensor, units: Readout | torch.Tensor | int,
                 check: Callable[[Readout, torch.Tensor, Layout, str], None] = readout.check_target
                 ) -> dict[str, torch.Tensor]:
        """{layer: relevance} for x and one unit per sample (a `Readout`, or channels); `check` validates the units
        against the target's output (its default raises on a channel, direction or position the layer lacks)."""
        units = readout.as_readout(units, x.shape[0], x.device)
        with torch.enable_grad(), RuleMode():
            captured = capture(self.model, x.detach(), {n: self.modules[n] for n in self.layers},
                               until=(self.target_layer, self.modules[self.target_layer]), copy=self.copy,
                               prepare=_leaf)
        if self.target_layer not in captured:
            raise VitalError(f"target layer '{self.target_layer}' did not run in the forward pass; pick a layer the "
                             "model uses")
        late = [n for n in self.layers if n not in captured]
        if late:
            raise VitalError(f"layer '{late[0]}' comes after the target layer '{self.target_layer}'; relevance "
                             f"reaches only layers upstream of the target: drop '{late[0]}' or pick a deeper target")
        a = captured[self.target_layer]
        layout = LayoutProbe.layout(self.model, self.target_layer, tuple(a.shape), x)
        check(units, a, layout, self.target_layer)
        start = self._start(a.detach(), units, layout)
        names = [n for n in self.layers if n != self.target_layer]
        grads = torch.autograd.grad(a, [captured[n] for n in names], start, allow_unused=True) if names else []
        out = {}
        for n, g in zip(names, grads, strict=True):
            r = (captured[n] * g).detach() if g is not None else torch.zeros_like(captured[n])
            out[n] = r if self.signed else r.clamp(min=0)
        if self.target_layer in self.layers:
            r = start * a.detach()
            out[self.target_layer] = r if self.signed else r.clamp(min=0)
        return {n: out[n] for n in self.layers}

    def features_and_relevance(self, x: torch.Tensor, units: Readout
                               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        raise VitalError("the modified-gradient rules run a forward of their own: call the backend for the "
                         "relevance and capture the features separately")

    def _start(self, a: torch.Tensor, units: Readout, layout: Layout) -> torch.Tensor:
        """G at the target: R / A, with R the unit's start relevance (`vital.relevance.readout`)."""
        r = readout.start(a, units, layout, self.method)
        return torch.where(a != 0, r / torch.where(a != 0, a, torch.ones_like(a)), torch.zeros_like(a))
