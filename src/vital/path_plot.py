"""A path-similarity plot (`vital.evaluate.faithfulness`) as inline SVG: per layer from the input to the unit, the
visualization's rank correlation with the unit's references between the floor (unrelated natural images) and the
ceiling (held-out references). Plain SVG, no script, every layer name escaped: it works in a notebook, a report and
the atlas from file://."""

from __future__ import annotations

import html
from typing import Any

from markupsafe import Markup

WIDTH, HEIGHT, PAD, BOTTOM = 320, 150, 30, 34
SERIES = (("ceiling", "#2a9d4b", "held-out references"), ("visual", "#1f5fbf", "visualization"),
          ("floor", "#999999", "unrelated photos"))


def _y(value: float) -> float:
    """Rank correlation in [-1, 1] to a vertical position."""
    inner = HEIGHT - PAD - BOTTOM
    return PAD + (1 - (max(-1.0, min(1.0, value)) + 1) / 2) * inner


def path_svg(path: dict[str, Any] | Any) -> Markup:
    """The plot of one path similarity (a `PathSimilarity` or its `as_dict()`)."""
    d = path if isinstance(path, dict) else path.as_dict()
    layers = list(d["layers"])
    n = len(layers)
    step = (WIDTH - 2 * PAD) / max(1, n - 1)

    def x(i: int) -> float:
        return PAD + (i * step if n > 1 else (WIDTH - 2 * PAD) / 2)

    parts = [f'<svg class="path-plot" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img"><title>path similarity per layer, summary '
             f'{_fmt(d.get("summary"))}</title>']
    for v in (-1.0, 0.0, 1.0):
        parts.append(f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{_y(v):.1f}" y2="{_y(v):.1f}" stroke="#ddd"/>'
                     f'<text x="2" y="{_y(v) + 4:.1f}" font-size="10">{v:+.0f}</text>')
    for key, colour, _ in SERIES:
        points = " ".join(f"{x(i):.1f},{_y(float(v)):.1f}" for i, v in enumerate(d[key]))
        parts.append(f'<polyline class="{key}" fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        parts += [f'<circle cx="{x(i):.1f}" cy="{_y(float(v)):.1f}" r="3" fill="{colour}"/>'
                  for i, v in enumerate(d[key])]
    for i, name in enumerate(layers):
        parts.append(f'<text x="{x(i):.1f}" y="{HEIGHT - BOTTOM + 14}" font-size="9" text-anchor="middle">'
                     f"{html.escape(name[-12:])}</text>")
    for j, (_, colour, label) in enumerate(SERIES):
        parts.append(f'<text x="{PAD + j * 95}" y="{HEIGHT - 4}" font-size="10" fill="{colour}">'
                     f"{html.escape(label)}</text>")
    parts.append("</svg>")
    return Markup("".join(parts))


def _fmt(value: Any) -> str:
    return "none" if value is None else f"{float(value):.2f}"


def summary_text(path: dict[str, Any] | Any) -> str:
    """One line: the summary and the per-layer shares."""
    d = path if isinstance(path, dict) else path.as_dict()
    shares = ", ".join(f"{name} {_fmt(s)}" for name, s in zip(d["layers"], d["share"], strict=True))
    return f"faithfulness {_fmt(d.get('summary'))} (share of the way from floor to ceiling per layer: {shares})"
