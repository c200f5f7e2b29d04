"""Path similarity: is a visualization processed along the same path through the network as the natural images
that drive its unit? A sanity check for feature visualizations after Geirhos, Zimmermann, Bilodeau, Brendel and Kim,
"Don't trust your eyes: on the (un)reliability of feature visualizations" (ICML 2024, arXiv 2306.04719), who show
that activation-maximising images can drive a unit through a different path than natural images do, and propose
comparing, layer by layer, the activations of the visualization with those of natural images of the unit by a rank
correlation (Spearman), against natural baselines.

Definition (docs/concepts/faithfulness.md). For a unit, its visualization(s) V, its natural top references split
into an anchor set A and a held-out set H, and natural images F that do not drive the unit, at each layer l between
the input and the unit:

- a profile per image: the layer's per-channel mean over positions (every layout: channels-first, channels-last,
  tokens, vectors; `vital.layout`), so that where in the image a pattern sits does not matter;
- rho_l(x, y): the Spearman rank correlation of two profiles (ties get their average rank);
- visual_l = mean over v in V, a in A of rho_l(v, a); floor_l the same for F; ceiling_l the same for H;
- share_l = (visual_l - floor_l) / (ceiling_l - floor_l): 0 is no closer to the references than unrelated photos,
  1 as close as other references of the unit. Where ceiling_l - floor_l < MIN_GAP (the layer does not tell the
  unit's images from others, often the stem) share_l is None;
- the summary: the same share on the path averaged over layers, mean_l(visual_l - floor_l) / mean_l(ceiling_l -
  floor_l) (None when that mean gap is below MIN_GAP). Averaging the path before dividing keeps a layer whose floor
  and ceiling nearly meet from dominating: measured on efficientnet_lite0, such layers give per-layer shares of +-5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vital.errors import VitalError
from vital.features import FeatureExtractor, resolve_modules, upstream_of
from vital.metrics.classify import Images, as_image_list, preprocess
from vital.models import VisionModel
from vital.targets import Channel, Class, Direction, Target

MIN_GAP = 0.05  # rank correlation between ceiling and floor below which a layer gets no share
BATCH = 32


@dataclass(frozen=True)
class PathSimilarity:
    """Per layer (input to unit): the visualization's, the floor's and the ceiling's mean rank correlation with
    the anchor references; `counts` = how many images each side had."""

    target: str
    layers: tuple[str, ...]
    visual: tuple[float, ...]
    floor: tuple[float, ...]
    ceiling: tuple[float, ...]
    counts: dict[str, int]

    @property
    def share(self) -> tuple[float | None, ...]:
        """Per layer: the share of the way from floor to ceiling (None where they do not separate)."""
        return tuple(None if c - f < MIN_GAP else (v - f) / (c - f)
                     for v, f, c in zip(self.visual, self.floor, self.ceiling, strict=True))

    @property
    def summary(self) -> float | None:
        """The share of the way from floor to ceiling of the path averaged over layers."""
        gap = sum(c - f for f, c in zip(self.floor, self.ceiling, strict=True)) / len(self.layers)
        if gap < MIN_GAP:
            return None
        return sum(v - f for v, f in zip(self.visual, self.floor, strict=True)) / len(self.layers) / gap

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "layers": list(self.layers), "visual": list(self.visual),
                "floor": list(self.floor), "ceiling": list(self.ceiling), "share": list(self.share),
                "summary": self.summary, "counts": dict(self.counts), "min_gap": MIN_GAP}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PathSimilarity:
        try:
            return cls(str(d["target"]), tuple(map(str, d["layers"])), tuple(map(float, d["visual"])),
                       tuple(map(float, d["floor"])), tuple(map(float, d["ceiling"])),
                       {str(k): int(v) for k, v in d["counts"].items()})
        except (KeyError, TypeError, ValueError) as e:
            raise VitalError(f"cannot read a path similarity from {str(d)[:80]} ({type(e).__name__})") from e


def path_layers(model: VisionModel, target: Target) -> list[str]:
    """The layers between the input and the unit: the model's matched layers upstream of a channel's layer, then
    that layer; for a class, every matched layer."""
    layers = list(model.preset.layers or [])
    if isinstance(target, Class):
        if not layers:
            raise VitalError(f"{model.name} has no matched layers to follow; pass layers=[...]")
        return layers
    if isinstance(target, (Channel, Direction)):
        return [*upstream_of(model.module, target.layer, layers, size=model.size), target.layer]
    raise VitalError(f"unsupported target {target!r}: use vital.Class(k) or vital.Channel(layer, c)")


def _inputs(model: VisionModel, images: Images) -> list[torch.Tensor]:
    return [preprocess(model, im) for im in as_image_list(images)]


def profiles(model: VisionModel, layers: Sequence[str], images: Images) -> dict[str, torch.Tensor]:
    """Per layer, (N, C) float64 on the CPU: each image's per-channel mean over positions."""
    xs = _inputs(model, images)
    if not xs:
        return {n: torch.zeros(0, 0, dtype=torch.float64) for n in layers}
    extract = FeatureExtractor(model.module, layers, view="positions")
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    with torch.no_grad():
        for i in range(0, len(xs), BATCH):
            x = torch.stack(xs[i:i + BATCH]).to(model.device, model.dtype)
            for n, f in extract(x).items():
                parts[n].append(f.mean(dim=-1).double().cpu())
    return {n: torch.cat(p) for n, p in parts.items()}


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Row-wise ranks (0-based) of (N, C), ties sharing their average rank."""
    s = x.sort(dim=1).values.contiguous()
    below = torch.searchsorted(s, x.contiguous(), right=False)
    upto = torch.searchsorted(s, x.contiguous(), right=True)
    return (below + upto - 1).to(torch.float64) / 2


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) Spearman rank correlations between the rows of a (N, C) and b (M, C); 0 against a constant row."""
    if a.shape[1] != b.shape[1]:
        raise VitalError(f"profiles of {a.shape[1]} and {b.shape[1]} channels cannot be compared")

    def standard(x: torch.Tensor) -> torch.Tensor:
        r = ranks(x)
        r = r - r.mean(dim=1, keepdim=True)
        norm = r.norm(dim=1, keepdim=True)
        return torch.where(norm > 0, r / norm.clamp_min(1e-300), torch.zeros_like(r))

    return standard(a) @ standard(b).T


def _mean_rho(x: torch.Tensor, anchor: torch.Tensor) -> float:
    return float(spearman(x, anchor).mean())


def split_references(references: Images) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(anchor, held-out): the references dealt alternately by rank, so both halves span the same strengths."""
    refs = as_image_list(references)
    if len(refs) < 2:
        raise VitalError(f"path similarity needs at least 2 references of the unit (half anchor, half held-out "
                         f"ceiling), got {len(refs)}")
    return refs[0::2], refs[1::2]


def path_similarity(model: VisionModel, target: Target, images: Images, references: Images, floor: Images, *,
                    held_out: Images | None = None, layers: Sequence[str] | None = None) -> PathSimilarity:
    """The path similarity of `images` (visualizations of `target`, [0,1]) with the unit's natural `references`
    ([0,1] images or paths, strongest first), against `floor` (natural images that do not drive the unit) and the
    held-out references (`held_out`, else every second reference; see the module docstring)."""
    vis = as_image_list(images)
    if not vis:
        raise VitalError("path similarity needs at least one visualization")
    if held_out is None:
        anchor, held = split_references(references)
    else:
        anchor, held = as_image_list(references), as_image_list(held_out)
        if not anchor or not held:
            raise VitalError("path similarity needs at least one reference and one held-out reference")
    low = as_image_list(floor)
    if not low:
        raise VitalError("path similarity needs natural images that do not drive the unit (the floor); got none")
    names = list(layers) if layers is not None else path_layers(model, target)
    if not names:
        raise VitalError("no layers to follow between the input and the unit")
    resolve_modules(model.module, names)
    prof = profiles(model, names, [*vis, *anchor, *held, *low])
    cut = [0, len(vis), len(vis) + len(anchor), len(vis) + len(anchor) + len(held), len(prof[names[0]])]
    rows: dict[str, list[float]] = {"visual": [], "floor": [], "ceiling": []}
    for n in names:
        p = prof[n]
        if p.shape[1] < 2:
            raise VitalError(f"layer '{n}' has {p.shape[1]} channel(s): a rank correlation needs at least 2")
        v, a, h, f = (p[cut[i]:cut[i + 1]] for i in range(4))
        rows["visual"].append(_mean_rho(v, a))
        rows["ceiling"].append(_mean_rho(h, a))
        rows["floor"].append(_mean_rho(f, a))
    return PathSimilarity(str(target), tuple(names), tuple(rows["visual"]), tuple(rows["floor"]),
                          tuple(rows["ceiling"]),
                          {"visualizations": len(vis), "references": len(anchor), "held_out": len(held),
                           "floor": len(low)})


def _unit_vector(target: Channel | Direction, channels: int, like: torch.Tensor) -> torch.Tensor:
    """(C,) the unit as a direction over the layer's channels: a one-hot for a channel."""
    if isinstance(target, Channel):
        if not 0 <= target.channel < channels:
            raise VitalError(f"channel {target.channel} is out of range: '{target.layer}' has {channels} channels")
        return torch.nn.functional.one_hot(torch.tensor(target.channel, device=like.device), channels).to(like.dtype)
    if len(target.vector) != channels:
        raise VitalError(f"the direction has {len(target.vector)} entries but '{target.layer}' has {channels} "
                         "channels")
    return torch.tensor(target.vector, device=like.device, dtype=like.dtype)


def unit_response(model: VisionModel, target: Target, images: Images) -> torch.Tensor:
    """(N,) how strongly each image drives the unit: a class's logit, a channel's (or a direction's readout's)
    maximum over positions."""
    if not isinstance(target, (Class, Channel, Direction)):
        raise VitalError(f"unsupported target {target!r}: use vital.Class(k) or vital.Channel(layer, c)")
    xs = _inputs(model, images)
    extract = None if isinstance(target, Class) else FeatureExtractor(model.module, [target.layer], view="positions")
    out = []
    with torch.no_grad():
        for i in range(0, len(xs), BATCH):
            x = torch.stack(xs[i:i + BATCH]).to(model.device, model.dtype)
            if isinstance(target, Class):
                out.append(model(x)[:, target.index].float().cpu())
                continue
            assert extract is not None
            act = extract(x)[target.layer]
            unit = _unit_vector(target, act.shape[1], act)
            out.append(torch.einsum("c,bcp->bp", unit, act).amax(dim=-1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def floor_images(model: VisionModel, target: Target, pool: Images, n: int) -> list[torch.Tensor]:
    """The `n` images of `pool` (natural images) that drive the unit least: the floor of `path_similarity`."""
    images = as_image_list(pool)
    if n < 1:
        raise VitalError(f"the floor needs at least 1 image, asked for {n}")
    if len(images) < 2 * n:
        raise VitalError(f"the floor picks the {n} least-driving of a pool of natural images at least twice as "
                         f"large; the pool has {len(images)}")
    order = unit_response(model, target, images).argsort()
    return [images[int(i)] for i in order[:n]]
