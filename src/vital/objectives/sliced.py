"""Sliced-Wasserstein alignment (Heitz et al., "A Sliced Wasserstein Loss for Neural Texture Synthesis", CVPR 2021)
beside VITAL's per-channel sort-matching.

Per-channel sort-matching (arXiv 2503.22399, method section; docs/concepts/sort-matching.md) matches each channel's marginal distribution over positions:
any shuffling of which channels fire together at a position leaves it unchanged. Projecting the C channels of a
layer onto K random unit directions and sort-matching each projection against the same projection of the references
constrains the joint distribution along those directions too:

    L_b += w_s * sum_l w_l * SM(D_l F_l(x_b), barycenter_n sort(D_l F_l(ref_n)))

with D_l (K, C) rows uniform on the unit sphere. Heitz et al. redraw the directions every step; here they are drawn
once per run from a seeded generator (recorded), so that the references' projected quantiles are computed once and a
step costs one matrix product and one sort per layer. The term reuses the alignment's own forward (no second pass
through the network) and is plain: the references' features enter unweighted by relevance.
"""

from __future__ import annotations

import torch

from vital.errors import VitalError
from vital.objectives.alignment import Alignment
from vital.objectives.base import Views
from vital.objectives.sort_matching import PrototypeAccumulator, sort_matching_loss


def random_directions(k: int, c: int, generator: torch.Generator) -> torch.Tensor:
    """(k, c) rows drawn uniformly on the unit sphere of R^c (normalised Gaussian vectors)."""
    d = torch.randn(k, c, generator=generator, device=generator.device, dtype=torch.float64)
    return (d / d.norm(dim=1, keepdim=True)).float()


def project(feats: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """(B, C, P) features onto (K, C) directions: (B, K, P)."""
    return torch.einsum("kc,bcp->bkp", directions.to(feats), feats)


def sliced_loss(feats: torch.Tensor, directions: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-sample (B,) sort-matching of the projections of `feats` (B, C, P) against sorted projected prototypes
    `q` (B, K, P): (1 / KP) sum_k sum_p (sorted projection - q)^2."""
    return sort_matching_loss(project(feats, directions), q)


class SlicedAlignment(Alignment):
    """`Alignment` plus `sliced` x the sliced-Wasserstein term on the same layers, weights and features."""

    name = "alignment+sliced"

    def __init__(self, *args, sliced: float = 1.0, projections: int | None = None, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        if sliced < 0:
            raise VitalError(f"sliced must be >= 0, got {sliced}")
        if projections is not None and projections < 1:
            raise VitalError(f"projections must be at least 1, got {projections}")
        self.sliced, self.projections, self.seed = float(sliced), projections, int(seed)
        self.directions: dict[str, torch.Tensor] = {}
        self.q_sliced: dict[str, torch.Tensor] = {}
        self._feats: dict[str, torch.Tensor] | None = None

    def _encode(self, x, channels, relevance):
        feats, rel = super()._encode(x, channels, relevance)
        self._feats = feats
        return feats, rel

    @torch.no_grad()
    def prepare(self, downsample: int) -> None:
        super().prepare(downsample)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        q: dict[int, dict[str, torch.Tensor]] = {}
        for i in self.refs.unique():
            accs = {n: PrototypeAccumulator() for n in self.layers}
            for x in self.refs.chunks(i, self.chunk, downsample):
                feats = self.extractor(x)
                for n in self.layers:
                    if n not in self.directions:
                        c = feats[n].shape[1]
                        d = random_directions(self.projections or c, c, gen)
                        self.directions[n] = d.to(feats[n].device)
                    accs[n].add(project(feats[n], self.directions[n]))
            q[i] = {n: a.prototype() for n, a in accs.items()}
        self.q_sliced = {n: self.refs.per_sample({i: q[i][n] for i in q}) for n in self.layers}

    def __call__(self, v: Views) -> torch.Tensor:
        loss = super().__call__(v)
        feats, self._feats = self._feats, None
        assert feats is not None
        per_view = (lambda t: t.repeat_interleave(v.n_views, dim=0)) if v.n_views > 1 else (lambda t: t)
        extra = torch.zeros(v.views.shape[0], device=v.views.device, dtype=v.views.dtype)
        for n, w in zip(self.layers, self.weights, strict=True):
            extra = extra + w * sliced_loss(feats[n], self.directions[n], per_view(self.q_sliced[n]))
        return loss + self.sliced * v.per_image(extra)

    def state(self) -> dict:
        return {**super().state(), "sliced": self.sliced, "projections": self.projections or "channels",
                "directions_seed": self.seed}
