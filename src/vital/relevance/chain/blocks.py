"""Steps made of steps: blocks without a skip (Serial), residual joins with relevance splitting (Residual), dense
blocks (DenseBlock), the helpers that run a list of steps, and `configure`, the pass that sets a whole chain's
stabiliser and canonization."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from vital.relevance.chain.rules import EPS, Conv, Linear, Pass, Step


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

    def children(self) -> list[list[Step]]:
        return [self.steps]

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

    def children(self) -> list[list[Step]]:
        return [self.branch, self.shortcut, self.post]

    def forward(self, x, keep):
        m, mctx = run_forward(self.branch, x, keep)
        s, sctx = run_forward(self.shortcut, x, keep)
        y, pctx = run_forward(self.post, m + s, keep)
        if not keep:
            return y, None
        ma, sa = m.abs(), s.abs()
        return y, (ma / (ma + sa + self.eps), mctx, sctx, pctx)

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

    def children(self) -> list[list[Step]]:
        return self.layers

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


def configure(steps: Sequence[Step], eps: float = EPS, fold: bool = True, fallback: bool = True,
              rules: Mapping[str, str] | None = None) -> int:
    """Set the stabiliser of every step of a chain (blocks included); with `fold`, fold each BatchNorm that
    directly follows a convolution into that convolution's rule (undone with fold=False); with `fallback`, convs
    send relevance that z+ would drop back by the w^2 rule; `rules` ({"Conv2d": "z+", "Linear": "epsilon"}, see
    `vital.relevance.rule_maps`) picks each weighted layer's rule. Returns the number of BatchNorms folded."""
    folded = 0
    for i, step in enumerate(steps):
        step.eps = eps
        if isinstance(step, Conv):
            step.fallback = fallback
            step.rule = (rules or {}).get("Conv2d", "z+")
        if isinstance(step, Linear):
            step.rule = (rules or {}).get("Linear", "z+")
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        if isinstance(step, Conv):
            bn = nxt.fn if isinstance(nxt, Pass) and isinstance(nxt.fn, nn.modules.batchnorm._BatchNorm) else None
            step.fold(bn if fold else None)
            folded += bn is not None and fold
        for sub in step.children():
            folded += configure(sub, eps, fold, fallback, rules)
    return folded
