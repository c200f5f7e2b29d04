"""How results show themselves in Jupyter (`_repr_html_`): a `Result` as its images, transparency maps and
references side by side, a `MiningStore` as a summary and a grid of top patches, an `EvalTable` as a table.

Images are inline base64 PNGs, so a saved notebook keeps them; every text that reaches the page (labels, layer
and file names, metric names) is escaped."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

from PIL import Image

from vital.errors import VitalError
from vital.io import checkerboard, to_uint8
from vital.run_folder import reference_thumbnails

if TYPE_CHECKING:
    from vital.evaluate import EvalTable
    from vital.references.store import MiningStore
    from vital.visualize import Result

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


def img_tag(image: Image.Image, alt: str) -> str:
    return f'<img src="{png_uri(image)}" alt="{html.escape(alt)}" title="{html.escape(alt)}" ' \
           f'width="{image.width}" height="{image.height}">'


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
        thumbs = reference_thumbnails(refs, REFERENCES) if refs is not None else []
        cells = [img_tag(image, f"{label}: visualization"), img_tag(alpha, f"{label}: transparency map")]
        cells.append(img_tag(strip(thumbs), f"{label}: {len(thumbs)} of {len(refs)} references")
                     if refs is not None and thumbs else "<em>no references</em>")
        if result.faithfulness:
            cells.append(_faithfulness_cell(result.faithfulness[i]))
        rows.append(f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    method = html.escape(str(result.record.get("method", "")))
    head = ("<tr><th>target</th><th>visualization</th><th>transparency map</th><th>references</th>"
            + ("<th>faithfulness</th>" if result.faithfulness else "") + "</tr>")
    return (f'<table class="vital-result"><caption>vital result{": " + method if method else ""}, '
            f"{len(result.labels)} image(s)</caption><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>")


def _faithfulness_cell(path) -> str:
    """The path-similarity plot and its summary line, or a dash for an image that was not judged."""
    from vital.path_plot import path_svg, summary_text

    if path is None:
        return "<em>not judged</em>"
    return f"{path_svg(path)}<br><small>{html.escape(summary_text(path))}</small>"


def store_html(store: MiningStore, channels: int = STORE_CHANNELS, patches: int = STORE_PATCHES) -> str:
    """What was mined (model, layers, images) and, for the first layer, its first channels' top patches."""
    idx = store.index
    layers = idx["layers"]
    facts = [("model", f"{idx.get('model', '?')} ({idx.get('weights_id', '?')})"),
             ("layers", ", ".join(f"{name} ({info['channels']} channels)" for name, info in layers.items())),
             ("images", f"{idx.get('images_processed', '?')} mined, {idx.get('skipped_count', 0)} skipped"),
             ("kept per channel", f"top {idx.get('k', '?')} patches"),
             ("folder", str(store.path) if store.path else "in memory")]
    summary = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
    grid = ""
    if layers:
        layer = next(iter(layers))
        rows = []
        try:
            for c in range(min(channels, int(layers[layer]["channels"]))):
                crops = [im for _, im in store.references(layer, c, kind="patches", n=patches).images]
                rows.append(f"<tr><th>{html.escape(layer)}:{c}</th><td>"
                            f"{img_tag(strip(crops), f'{layer}:{c}: top {len(crops)} patches')}</td></tr>")
        except VitalError as e:  # the images moved: the summary still shows, with the fix in place of the grid
            grid = f'<p class="vital-store-note">{html.escape(str(e))}</p>'
        else:
            grid = (f'<table class="vital-store-grid"><caption>top patches of {html.escape(layer)}</caption>'
                    f"{''.join(rows)}</table>")
    return f'<div class="vital-store"><table class="vital-store-summary">{summary}</table>{grid}</div>'


def table_html(table: EvalTable) -> str:
    """The evaluation table with its notes (how each number was obtained)."""
    return f'<div class="vital-eval">{table.to_html()}</div>'
