"""Judges that match the layer: where a neuron's images are compared with its held-out references.

Issue 19 judged every layer in efficientnet_lite2's penultimate (semantic) features, where two patches of the same
texture from different objects land far apart; there a mid-layer neuron's own top patch did not find its held-out
references more often than chance. The rule below, written before any VITAL row was judged with it, picks for each
target layer an independent network's block at a comparable depth and the statistics that suit that depth:

- judge network: efficientnet_lite2, or efficientnet_lite0 when the target is efficientnet_lite2 (never the target
  network itself);
- judge block: the target layer's relative depth among its network's `_blocks` (index / (count - 1)), mapped to the
  judge's `_blocks` and rounded (lite0 `_blocks.4` / `.7` / `.12` -> lite2 `_blocks.5` / `.9` / `.16`);
- statistics: below 2/3 of the depth, texture statistics of that block's output (the unit vector of its channel
  means, beside the unit vector of the upper triangle of its Gram matrix over positions; the cosine of two such
  features is the mean of the two cosines); from 2/3 on, the unit vector of the block's spatially pooled output.

Retrieval, per neuron: its image scores each neuron's held-out reference set by mean cosine (the library's
`retrieval_from_features`); the image retrieves its own set among M candidates (its own set and M-1 others of the
same layer drawn at random) when no candidate scores above its own. The hit probability over every draw is exact:
with b of the n-1 other sets scored at most its own, C(b, M-1) / C(n-1, M-1). Chance is 1/M.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np
import torch

from vital.metrics.classify import preprocess
from vital.metrics.neuron import retrieval_from_features
from vital.models import VisionModel

CANDIDATES = 16  # as issue 19's 16 neurons per layer: chance 6%
TEXTURE_BELOW = 2 / 3


@dataclass(frozen=True)
class JudgeSpec:
    network: str
    block: str
    kind: str  # "texture" or "pooled"


def block_index(layer: str) -> int:
    return int(layer.split(".")[1])


def judge_network(target: str) -> str:
    return "efficientnet_lite0" if target == "efficientnet_lite2" else "efficientnet_lite2"


def judge_for(target: str, layer: str, target_blocks: int, judge_blocks: int) -> JudgeSpec:
    """The rule of the module docstring for one target layer."""
    network = judge_network(target)
    depth = block_index(layer) / (target_blocks - 1)
    block = f"_blocks.{round(depth * (judge_blocks - 1))}"
    return JudgeSpec(network, block, "texture" if depth < TEXTURE_BELOW else "pooled")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def texture_statistics(fmap: np.ndarray) -> np.ndarray:
    """(N, C + C(C+1)/2) features of (N, C, H, W) activations: unit channel means beside the unit upper triangle of
    the Gram matrix F F^T / (H W), each half scaled by 1/sqrt(2) so the whole vector has unit length."""
    n, c = fmap.shape[:2]
    flat = fmap.reshape(n, c, -1)
    means = flat.mean(2)
    gram = np.einsum("ncp,ndp->ncd", flat, flat) / flat.shape[2]
    iu = np.triu_indices(c)
    return np.concatenate([_unit(means), _unit(gram[:, iu[0], iu[1]])], 1) / np.sqrt(2.0)


def pooled(fmap: np.ndarray) -> np.ndarray:
    """(N, C) unit vectors of spatially averaged activations."""
    return _unit(fmap.mean((2, 3)))


def judge_features(model: VisionModel, spec: JudgeSpec, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """Features of [0,1] images (N, 3, H, W) at the judge's block, preprocessed as the judge's classifier input."""
    module = dict(model.module.named_modules())[spec.block]
    out: list[np.ndarray] = []
    grabbed: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda _m, _i, o: grabbed.append(o.detach().float().cpu()))
    reduce = texture_statistics if spec.kind == "texture" else pooled
    try:
        with torch.no_grad():
            for s in range(0, len(images), batch_size):
                x = torch.stack([preprocess(model, im) for im in images[s:s + batch_size]])
                model(x.to(model.device, model.dtype))
                out.append(reduce(grabbed.pop().numpy().astype(np.float64)))
    finally:
        hook.remove()
    return np.concatenate(out)


def hit_probability(scores: np.ndarray, own: np.ndarray, candidates: int = CANDIDATES) -> np.ndarray:
    """Per image i, the probability that no candidate set scores above set own[i], when the candidates are own[i]
    and `candidates`-1 of the other n-1 sets drawn without replacement (all of them when there are fewer)."""
    n = scores.shape[1]
    m = min(candidates, n)
    out = np.empty(len(scores))
    for i, o in enumerate(own):
        others = np.delete(scores[i], o)
        b = int((others <= scores[i, o]).sum())
        out[i] = comb(b, m - 1) / comb(n - 1, m - 1)
    return out


def retrieval(images: np.ndarray, sets: list[np.ndarray], candidates: int = CANDIDATES,
              own: np.ndarray | None = None) -> np.ndarray:
    """Per image, the hit probability of retrieving set own[i] (default i) among `candidates` in judge features."""
    scores = retrieval_from_features(images, sets).scores
    return hit_probability(scores, np.arange(len(images)) if own is None else own, candidates)


def shuffled_retrieval(images: np.ndarray, sets: list[np.ndarray], candidates: int = CANDIDATES,
                       draws: int = 50, seed: int = 0) -> np.ndarray:
    """The chance row: per image, its hit probability for a set assigned at random (another neuron's, never its
    own), averaged over `draws` random assignments."""
    scores = retrieval_from_features(images, sets).scores
    rng = np.random.default_rng(seed)
    n = len(images)
    total = np.zeros(n)
    for _ in range(draws):
        own = (np.arange(n) + rng.integers(1, n, n)) % n
        total += hit_probability(scores, own, candidates)
    return total / draws


def medoid(features: np.ndarray) -> np.ndarray:
    """The member of a set (rows) with the highest mean cosine to the other members: the set's most typical image."""
    unit = _unit(features)
    sim = unit @ unit.T
    return features[int((sim.sum(1) - np.diag(sim)).argmax())]


def chance(n_sets: int, candidates: int = CANDIDATES) -> float:
    return 1 / min(candidates, n_sets)
