"""The rule-chain backend: a call is one forward of the chain truncated at the target, keeping what the rules need,
then one backward relevance pass that stops at the shallowest requested layer. Nothing builds an autograd graph
through the model for the relevance; `features_and_relevance` gives the layers' outputs, with their graph, from
the same forward."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from vital.relevance import readout
from vital.relevance.chain.blocks import configure, propagate_chain
from vital.relevance.chain.rules import Step
from vital.relevance.readout import Readout


class ChainRelevance:
    """Relevance at the layers produced by chain steps `positions` (name -> step index), from the output of step
    `target`. `eps`, `fold_batchnorm`, `conserve`: see `vital.relevance.RelevanceEngine`."""

    name = "chain"
    joint_forward = True

    def __init__(self, steps: list[Step], target_layer: str, target: int, positions: dict[str, int], method: str,
                 eps: float, fold_batchnorm: bool, conserve: bool, rules: Mapping[str, str] | None = None):
        self.steps = steps[:target + 1]
        self.target_layer, self.target_index, self.method = target_layer, target, method
        self.layers = list(positions)
        propagate_chain(self.steps, False)
        self.folded = configure(self.steps, eps, fold_batchnorm, conserve, rules)
        self.stop = min(positions.values())
        self.capture: dict[int, list[str]] = {}
        for n, i in positions.items():
            self.capture.setdefault(i, []).append(n)

    def __call__(self, x: torch.Tensor, units: Readout) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            h, ctxs, _ = self._forward(x.detach())
            return self._relevance(h, ctxs, units)

    def features_and_relevance(self, x: torch.Tensor, units: Readout
                               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        h, ctxs, feats = self._forward(x, grad_until=max(self.capture))
        with torch.no_grad():
            return feats, self._relevance(h, ctxs, units)

    def _forward(self, x: torch.Tensor, grad_until: int = -1
                 ) -> tuple[torch.Tensor, list, dict[str, torch.Tensor]]:
        """Run the chain to the target, keeping what the rules need; steps up to `grad_until` build a graph."""
        feats: dict[str, torch.Tensor] = {}
        h, ctxs = x, []
        for i, step in enumerate(self.steps):
            with torch.set_grad_enabled(i <= grad_until and torch.is_grad_enabled()):
                h, ctx = step.forward(h, keep=i > self.stop)
            ctxs.append(ctx)
            for n in self.capture.get(i, ()):
                feats[n] = h
        return h, ctxs, feats

    def _relevance(self, h: torch.Tensor, ctxs: list, units: Readout) -> dict[str, torch.Tensor]:
        """The backward relevance pass from the target output `h`, through the kept contexts (call under no_grad)."""
        out: dict[str, torch.Tensor] = {}
        h = h.detach()
        layout = readout.cnn_layout(h)
        readout.check_target(units, h, layout, self.target_layer)
        r = readout.start(h, units, layout, self.method)
        for i in range(self.target_index, self.stop - 1, -1):
            for n in self.capture.get(i, ()):
                out[n] = r
            if i > self.stop:
                r = self.steps[i].relevance(r, ctxs[i])
                ctxs[i] = None  # free what this step kept as soon as it is used
        return {n: out[n] for n in self.layers}
