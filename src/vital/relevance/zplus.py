"""The z+ rule of a 2-D convolution, written once for both LRP backends.

z = conv(a+; W+, b+) + conv(a-; W-) (the positive contributions of a signed input, alpha=1, beta=0; with a
non-negative input only the first term), s = R / (z + eps), and the relevance of the input is
a+ * conv^T(s; W+) + a- * conv^T(s; W-). The rule chain (`vital.relevance.chain.rules.Conv`) applies it to the
relevance itself; the modified-gradient rules (`vital.relevance.modified_gradient`) carry G = R / a and take
where(a > 0, conv^T(s; W+), conv^T(s; W-)) as the gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

EPS = 1e-5  # default stabiliser of every z / z+ denominator; the residual split's epsilon too


def same_padding(kernel: Sequence[int], dilation: Sequence[int]) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) that padding='same' adds, as torch splits it (the odd pixel on the right)."""
    pad: list[int] = []
    for k, d in zip(reversed(tuple(kernel)), reversed(tuple(dilation)), strict=True):
        total = d * (k - 1)
        pad += [total // 2, total - total // 2]
    return pad[0], pad[1], pad[2], pad[3]


@dataclass(frozen=True)
class ConvGeometry:
    """Stride, explicit padding, dilation and groups of a convolution, with `pre_pad` (left, right, top, bottom)
    applied to its input before it (a static 'same' padding); strings are made explicit so that the adjoint can be
    written."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    pre_pad: tuple[int, ...] | None = None

    @classmethod
    def of(cls, weight: torch.Tensor, stride, padding, dilation, groups: int,
           pre_pad: Sequence[int] | None = None) -> ConvGeometry:
        """From F.conv2d's arguments. padding='same' becomes explicit padding where it is symmetric (as torch
        runs it), a `pre_pad` otherwise; 'valid' is no padding."""
        dil = tuple(int(d) for d in _pair(dilation))
        pad: tuple[int, ...]
        if isinstance(padding, str):
            pre_pad = same_padding(weight.shape[-2:], dil) if padding == "same" else None
            pad = (0, 0)
            if pre_pad is not None and pre_pad[0] == pre_pad[1] and pre_pad[2] == pre_pad[3]:
                pad, pre_pad = (pre_pad[2], pre_pad[0]), None
        else:
            pad = tuple(int(p) for p in _pair(padding))
        s = tuple(int(v) for v in _pair(tuple(stride) if isinstance(stride, list) else stride))
        stride2 = s * 2 if len(s) == 1 else s  # EfficientNet-Lite's convs may store a one-element list
        pre = tuple(int(p) for p in pre_pad) if pre_pad and any(pre_pad) else None
        return cls((stride2[0], stride2[1]), (pad[0], pad[1]), (dil[0], dil[1]), int(groups), pre)

    def conv(self, a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """The convolution on an input that `pre_pad` has already been applied to."""
        return F.conv2d(a, w, b, self.stride, self.padding, self.dilation, self.groups)

    def adjoint(self, s: torch.Tensor, w: torch.Tensor, size: Sequence[int], matmul_1x1: bool = True
                ) -> torch.Tensor:
        """conv^T(s; w) onto an input of spatial `size`. `matmul_1x1`: a plain 1x1 convolution's adjoint as a
        matrix product (torch's conv_transpose2d takes a slow path for it); the modified-gradient backend keeps
        the convolution kernel, the one autograd uses, so that its results stay what they were."""
        k = w.shape[-2:]
        if (matmul_1x1 and tuple(k) == (1, 1) and self.stride == (1, 1) and self.groups == 1
                and self.padding == (0, 0) and tuple(size) == tuple(s.shape[-2:])):
            return torch.einsum("bohw,oi->bihw", s, w[:, :, 0, 0])
        extra = [size[i] - ((s.shape[2 + i] - 1) * self.stride[i] - 2 * self.padding[i]
                            + self.dilation[i] * (k[i] - 1) + 1) for i in range(2)]
        return F.conv_transpose2d(s, w, None, self.stride, self.padding, extra, self.groups, self.dilation)

    def z(self, a: torch.Tensor, wp: torch.Tensor, wn: torch.Tensor | None, bp: torch.Tensor | None
          ) -> torch.Tensor:
        """The positive contributions: conv(a+; W+, b+) + conv(a-; W-), or conv(a; W+, b+) without `wn` (an input
        known to be non-negative)."""
        if wn is None:
            return self.conv(a, wp, bp)
        return self.conv(a.clamp(min=0), wp, bp) + self.conv(a.clamp(max=0), wn, None)

    def back(self, s: torch.Tensor, wp: torch.Tensor, wn: torch.Tensor | None, size: Sequence[int],
             matmul_1x1: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(conv^T(s; W+), conv^T(s; W-)): the factors of the input's positive and negative parts."""
        gp = self.adjoint(s, wp, size, matmul_1x1)
        return gp, None if wn is None else self.adjoint(s, wn, size, matmul_1x1)


def crop(r: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    """Undo F.pad(x, (left, right, top, bottom)) on the last two dimensions."""
    left, right, top, bottom = pad
    h, w = r.shape[-2:]
    return r[..., top:h - bottom, left:w - right]
