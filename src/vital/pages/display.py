"""How results show themselves in Jupyter (`_repr_html_`): a `Result` as its images, transparency maps and
references side by side, a `MiningStore` as a summary and a grid of top patches, an `EvalTable` as a table.

Images are inline base64 PNGs, so a saved notebook keeps them; the HTML comes from the same autoescaping
templates as the report and the atlas (`vital.pages.render`), so every text that reaches the page (labels, layer
and file names, metric names) is escaped by construction."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image

from vital.errors import VitalError
from vital.outputs.io import checkerboard, to_uint8
from vital.pages.path_plot import path_svg, summary_text
from vital.pages.render import render

if TYPE_CHECKING:
    from vital.metrics.evaluation import EvalTable
    from vital.references.store import MiningStore
    from vital.run.execute import Result

SIZE = 160  # px of a visualization and its transparency map
THUMB = 64  # px of a reference or a patch
REFERENCES = 6  # references shown beside each visualization
STORE_CHANNELS = 8  # rows of a store's grid
STORE_PATCHES = 8  # patches per row


def png_uri(image: Image.Image) -> str:
    """A data: URI holding the image as PNG."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def inline(image: Image.Image, alt: str) -> dict[str, Any]:
    """An image as the templates' `inline_image` shows it."""
    return {"src": png_uri(image), "alt": alt, "width": image.width, "height": image.height}


def strip(images: Sequence[Image.Image], tile: int = THUMB) -> Image.Image:
    """Images side by side in one picture, each centre-cropped to a `tile` square."""
    out = Image.new("RGB", (max(1, len(images)) * tile, tile), (128, 128, 128))
    for i, im in enumerate(images):
        w, h = im.size
        s = min(w, h)
        square = im.convert("RGB").crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        out.paste(square.resize((tile, tile), Image.Resampling.BICUBIC), (i * tile, 0))
    return out


def on_checkerboard(rgba: Image.Image) -> Image.Image:
    """A transparency map over a checkerboard, so that transparent parts read as such on any page."""
    board = checkerboard(rgba.width).resize(rgba.size).convert("RGBA")
    return Image.alpha_composite(board, rgba.convert("RGBA")).convert("RGB")


def result_html(result: Result) -> str:
    """One row per image: label, the visualization, its transparency map, its references as one strip."""
    rows = []
    for i, label in enumerate(result.labels):
        image = Image.fromarray(to_uint8(result.images[i])).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        alpha = on_checkerboard(Image.fromarray(result.transparency(i), "RGBA").resize((SIZE, SIZE)))
        refs = result.references[i]
        thumbs = refs.thumbnails(REFERENCES) if refs is not None else []
        path = result.faithfulness[i] if result.faithfulness else None
        rows.append({"label": label, "image": inline(image, f"{label}: visualization"),
                     "alpha": inline(alpha, f"{label}: transparency map"),
                     "references": inline(strip(thumbs), f"{label}: {len(thumbs)} of {len(refs)} references")
                     if refs is not None and thumbs else None,
                     "path": None if path is None else {"svg": path_svg(path), "text": summary_text(path)}})
    return render("jupyter_result.html", method=str(result.record.get("method", "")), rows=rows,
                  faithfulness=bool(result.faithfulness)).strip()


def store_html(store: MiningStore, channels: int = STORE_CHANNELS, patches: int = STORE_PATCHES) -> str:
    """What was mined (model, layers, images) and, for the first layer, its first channels' top patches."""
    idx = store.index
    layers = idx["layers"]
    facts = [("model", f"{idx.get('model', '?')} ({idx.get('weights_id', '?')})"),
             ("layers", ", ".join(f"{name} ({info['channels']} channels)" for name, info in layers.items())),
             ("images", f"{idx.get('images_processed', '?')} mined, {idx.get('skipped_count', 0)} skipped"),
             ("kept per channel", f"top {idx.get('k', '?')} patches"),
             ("folder", str(store.path) if store.path else "in memory")]
    layer = next(iter(layers), None)
    rows, note = [], None
    try:
        for c in range(min(channels, int(layers[layer]["channels"])) if layer is not None else 0):
            crops = [im for _, im in store.references(str(layer), c, kind="patches", n=patches).images]
            rows.append((f"{layer}:{c}", inline(strip(crops), f"{layer}:{c}: top {len(crops)} patches")))
    except VitalError as e:  # the images moved: the summary still shows, with the fix in place of the grid
        note = str(e)
    return render("jupyter_store.html", facts=facts, layer=layer, rows=rows, note=note).strip()


def table_html(table: EvalTable) -> str:
    """The evaluation table with its notes (how each number was obtained)."""
    return render("jupyter_table.html", table=table.shown()).strip()
