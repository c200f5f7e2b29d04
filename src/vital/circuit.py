"""Circuits: which upstream channels a neuron's evidence comes from, by LRP relevance over its references.

For a target channel, the relevance of its references (the same LRP that weights VITAL's alignment) is captured
at each matched layer upstream of it, summed over the references and over positions, per channel. A channel's
share is its part of that layer's total: the "where" of circuit analysis, paired with VITAL's "what" when those
channels are visualised too (`vital circuit`). Written as circuit.json and drawn as an SVG graph, edges weighted by
share, on the neuron's atlas page.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from markupsafe import Markup

from vital.errors import VitalError
from vital.features import LayoutProbe, upstream_of
from vital.layout import to_positions
from vital.models.zoo import VisionModel
from vital.outputs.fields import Fields
from vital.outputs.io import write_json
from vital.references.images import ReferenceSet

FORMAT = "vital-circuit/1"
CIRCUIT = "circuit.json"


@dataclass(frozen=True)
class Source:
    """One upstream channel: its share of the layer's relevance for the target, and the relevance itself."""

    layer: str
    channel: int
    share: float
    relevance: float


@dataclass
class Circuit:
    """The top upstream channels of (layer, channel) at each of `layers` (nearest first)."""

    model: str
    layer: str
    channel: int
    relevance: str
    references: int
    layers: list[str]
    sources: dict[str, list[Source]] = field(default_factory=dict)
    # (from layer, from channel, to layer, to channel, share): the share of the "to" channel's own relevance, on the
    # target's references, that comes from the "from" channel; the first column feeds the target itself
    edges: list[tuple[str, int, str, int, float]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"format": FORMAT, "model": self.model, "layer": self.layer, "channel": self.channel,
                "relevance": self.relevance, "references": self.references, "layers": self.layers,
                "sources": {n: [asdict(s) for s in v] for n, v in self.sources.items()},
                "edges": [list(e) for e in self.edges]}

    def save(self, path: str | os.PathLike) -> Path:
        return write_json(self.as_dict(), path)

    @classmethod
    def read(cls, path: str | os.PathLike) -> Circuit:
        """The circuit in `path` (a circuit.json), every field checked: a wrong type or a missing key is one line
        naming the file and the field."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise VitalError(f"cannot read the circuit {path} ({type(e).__name__}); it is damaged") from e
        return cls.from_json(data, str(path))

    @classmethod
    def from_json(cls, data: Any, where: str = "the circuit") -> Circuit:
        """A circuit from its JSON value (see `read`)."""
        c = Fields(where, f"it is damaged or not a {CIRCUIT} written by vital")
        c.value(data, "object", "the circuit")
        out = cls(c.key(data, "model", "text"), c.key(data, "layer", "text"), c.key(data, "channel", "whole number"),
                  c.key(data, "relevance", "text"), c.key(data, "references", "whole number"),
                  [c.value(n, "text", f"layers[{i}]") for i, n in enumerate(c.key(data, "layers", "list"))])
        for layer, srcs in c.key(data, "sources", "object").items():
            out.sources[layer] = []
            for i, src in enumerate(c.value(srcs, "list", f"sources.{layer}")):
                at = f"sources.{layer}[{i}]"
                c.value(src, "object", at)
                out.sources[layer].append(Source(c.key(src, "layer", "text", at), c.key(src, "channel", "whole number", at),
                                                 c.key(src, "share", "number", at), c.key(src, "relevance", "number", at)))
        for i, e in enumerate(c.key(data, "edges", "list", optional=True, default=[])):
            kinds = ("text", "whole number", "text", "whole number", "number")
            if not isinstance(e, list) or len(e) != 5:
                c.fail(f"edges[{i}]", "is not [from layer, from channel, to layer, to channel, share]")
            out.edges.append(tuple(c.value(v, k, f"edges[{i}][{j}]") for j, (v, k) in enumerate(zip(e, kinds,
                                                                                                 strict=True))))
        return out


def channel_relevance(model: VisionModel, layer: str, channel: int, images: torch.Tensor, upstream: Sequence[str],
                      method: str = "lrp") -> dict[str, torch.Tensor]:
    """{upstream layer: (C,) relevance of each of its channels for `channel` of `layer`}, summed over the images
    (model input space) and positions."""
    from vital.relevance import RelevanceEngine

    engine = RelevanceEngine(model.module, layer, list(upstream), method)
    totals: dict[str, torch.Tensor] = {}
    for chunk in images.split(8):
        chunk = chunk.to(model.device, model.dtype)
        rel = engine(chunk, channel)  # shaped like each layer's output, in its layout
        for n in upstream:
            layout = LayoutProbe.layout(model.module, n, tuple(rel[n].shape), chunk)
            totals[n] = totals.get(n, 0) + to_positions(rel[n], layout).double().sum(dim=(0, 2))
    return totals


def circuit(model: VisionModel, layer: str, channel: int, references: ReferenceSet,
            layers: Sequence[str] | None = None, depth: int = 2, top: int = 4, method: str = "lrp") -> Circuit:
    """The `top` upstream channels at each of the `depth` matched layers nearest to `layer` (the preset's, or
    `layers`), by their share of the relevance of the target's references."""
    if depth < 1 or top < 1:
        raise VitalError(f"depth and top must be at least 1, got {depth} and {top}")
    candidates = list(layers) if layers else list(model.preset.layers or ())
    upstream = upstream_of(model.module, layer, candidates, size=model.size)
    if not upstream:
        raise VitalError(f"no matched layer is upstream of '{layer}' ({', '.join(candidates)}); pass --layers")
    chosen = upstream[::-1][:depth]  # nearest first
    images = references.load(model.transform())
    totals = channel_relevance(model, layer, channel, images, chosen, method)
    out = Circuit(model.name, layer, channel, method, len(images), chosen)
    for n in chosen:
        t = totals[n]
        whole = float(t.sum())
        if whole <= 0:
            raise VitalError(f"channel {channel} of '{layer}' has no positive relevance at '{n}' on its references; "
                             "pick references where the channel responds")
        order = torch.argsort(t, descending=True)[:top]
        out.sources[n] = [Source(n, int(c), float(t[c]) / whole, float(t[c])) for c in order]
    out.edges = [(s.layer, s.channel, layer, channel, s.share) for s in out.sources[chosen[0]]]
    for near, far in zip(chosen, chosen[1:], strict=False):  # each source's own sources one layer further up
        for node in out.sources[near]:
            t = channel_relevance(model, near, node.channel, images, [far], method)[far]
            whole = float(t.sum())
            for s in out.sources[far]:
                out.edges.append((far, s.channel, near, node.channel, float(t[s.channel]) / whole if whole > 0 else 0.0))
    return out


def svg(data: dict | Circuit, link: dict[tuple[str, int], str] | None = None, width: int = 640) -> Markup:
    """The circuit as an SVG graph: the target on the right, each upstream layer a column to its left (nearest
    first), an edge per recorded share, its width and opacity by the share. `link` maps (layer, channel) to a page
    for clickable nodes. Rendered through a template: every name in it is escaped."""
    from vital.pages.render import render

    c = data if isinstance(data, Circuit) else Circuit.from_json(data)
    cols = len(c.layers) + 1
    rows = max([len(v) for v in c.sources.values()] + [1])
    w, h = width, 70 + rows * 64
    xs = [w - 70 - i * (w - 140) / max(1, cols - 1) for i in range(cols)]
    pos: dict[tuple[str, int], tuple[float, float]] = {(c.layer, c.channel): (xs[0], h / 2)}
    shares: dict[tuple[str, int], float] = {}
    for i, n in enumerate(c.layers):
        srcs = c.sources.get(n, [])
        for j, s in enumerate(srcs):
            pos[(n, s.channel)] = (xs[i + 1], 30 + (j + 0.5) * (h - 60) / max(1, len(srcs)))
            shares[(n, s.channel)] = s.share
    edges = [{"x1": f"{pos[(fl, fc)][0] + 26:.1f}", "y1": f"{pos[(fl, fc)][1]:.1f}", "x2": f"{pos[(tl, tc)][0] - 26:.1f}",
              "y2": f"{pos[(tl, tc)][1]:.1f}", "width": f"{0.5 + 10 * share:.2f}", "opacity": f"{0.2 + 0.8 * share:.2f}",
              "title": f"{fl}:{fc} to {tl}:{tc}: {100 * share:.1f}%"}
             for fl, fc, tl, tc, share in c.edges if (fl, fc) in pos and (tl, tc) in pos]
    nodes = []
    for (layer, ch), (x, y) in pos.items():
        share = shares.get((layer, ch))
        nodes.append({"x": f"{x:.1f}", "rx": f"{x - 26:.1f}", "ry": f"{y - 13:.1f}", "ty": f"{y + 4:.1f}",
                      "ly": f"{y + 25:.1f}", "channel": ch, "href": (link or {}).get((layer, ch)),
                      "label": layer + (f" · {100 * share:.0f}%" if share is not None else " (target)")})
    return Markup(render("circuit.svg", w=w, h=h, edges=edges, nodes=nodes).strip())
