"""Diversity among several images of the same target (lucent's "diversity" objective, Olah et al. 2017): the mean
cosine similarity of the images' Gram matrices (channel co-activations) at a layer, over every pair of images of
one target. Added to each image's loss with a weight, it pushes the copies of a target apart in style, so that
they show different facets of what the unit encodes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vital.features import FeatureExtractor
from vital.models.zoo import VisionModel
from vital.objectives.base import Term, Views


def gram_similarity(feats: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(N,) for features (N, C, P) and a group id per row: each row's mean cosine similarity of its Gram matrix with
    those of the other rows of its group (0 for a row alone)."""
    grams = torch.einsum("ncp,ndp->ncd", feats, feats) / feats.shape[-1]
    flat = F.normalize(grams.flatten(1), dim=1)
    sim = flat @ flat.T
    same = (groups[:, None] == groups[None, :]) & ~torch.eye(len(groups), dtype=torch.bool, device=feats.device)
    count = same.sum(1).clamp(min=1)
    return (sim * same).sum(1) / count


class Diversity(Term):
    """Per image: `similarity of its Gram matrix at `layer` with its siblings'` (images `copies` apart in the batch
    are siblings: image b belongs to target b // copies)."""

    name = "diversity"

    def __init__(self, model: VisionModel, layer: str, copies: int):
        self.layer, self.copies = layer, copies
        self.extractor = FeatureExtractor(model.module, [layer])

    def __call__(self, v: Views) -> torch.Tensor:
        feats = self.extractor(v.views)[self.layer]
        image = torch.arange(v.views.shape[0], device=feats.device) // v.n_views
        group = image // self.copies * v.n_views + (torch.arange(v.views.shape[0], device=feats.device) % v.n_views)
        return v.per_image(gram_similarity(feats, group))  # views compared with the same view of the siblings

    def state(self) -> dict:
        return {"name": self.name, "layer": self.layer, "copies": self.copies}
