"""A path-similarity plot (`vital.metrics.faithfulness`) as inline SVG: per layer from the input to the unit, the
visualization's rank correlation with the unit's references between the floor (unrelated natural images) and the
ceiling (held-out references). Plain SVG from an autoescaping template, no script: it works in a notebook, a report and
the atlas from file://."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from vital.pages.render import render

WIDTH, HEIGHT, PAD, BOTTOM = 320, 150, 30, 34
SERIES = (("ceiling", "#2a9d4b", "held-out references"), ("visual", "#1f5fbf", "visualization"),
          ("floor", "#999999", "unrelated photos"))


def _y(value: float) -> float:
    """Rank correlation in [-1, 1] to a vertical position."""
    inner = HEIGHT - PAD - BOTTOM
    return PAD + (1 - (max(-1.0, min(1.0, value)) + 1) / 2) * inner


def path_svg(path: dict[str, Any] | Any) -> Markup:
    """The plot of one path similarity (a `PathSimilarity` or its `as_dict()`), rendered by the autoescaping
    template `path_plot.svg`."""
    d = path if isinstance(path, dict) else path.as_dict()
    layers = list(d["layers"])
    n = len(layers)
    step = (WIDTH - 2 * PAD) / max(1, n - 1)

    def x(i: int) -> str:
        return f"{PAD + (i * step if n > 1 else (WIDTH - 2 * PAD) / 2):.1f}"

    grid = [{"x1": PAD, "x2": WIDTH - PAD, "y": f"{_y(v):.1f}", "ty": f"{_y(v) + 4:.1f}", "label": f"{v:+.0f}"}
            for v in (-1.0, 0.0, 1.0)]
    series = [{"key": key, "colour": colour, "label": label, "lx": PAD + j * 95,
               "dots": [(x(i), f"{_y(float(v)):.1f}") for i, v in enumerate(d[key])],
               "points": " ".join(f"{x(i)},{_y(float(v)):.1f}" for i, v in enumerate(d[key]))}
              for j, (key, colour, label) in enumerate(SERIES)]
    names = [{"x": x(i), "y": HEIGHT - BOTTOM + 14, "name": name[-12:]} for i, name in enumerate(layers)]
    return Markup(render("path_plot.svg", w=WIDTH, h=HEIGHT, summary=_fmt(d.get("summary")), grid=grid,
                         series=series, names=names).strip())


def _fmt(value: Any) -> str:
    return "none" if value is None else f"{float(value):.2f}"


def summary_text(path: dict[str, Any] | Any) -> str:
    """One line: the summary and the per-layer shares."""
    d = path if isinstance(path, dict) else path.as_dict()
    shares = ", ".join(f"{name} {_fmt(s)}" for name, s in zip(d["layers"], d["share"], strict=True))
    return f"faithfulness {_fmt(d.get('summary'))} (share of the way from floor to ceiling per layer: {shares})"
