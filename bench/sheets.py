"""Side-by-side JPEG contact sheets for the quality benches: a row per target, a column per method."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from vital.outputs.io import to_uint8


def grid(path: Path, rows: Sequence[Sequence[torch.Tensor]], columns: Sequence[str], row_labels: Sequence[str],
         thumb: int = 96, quality: int = 85) -> None:
    """[0,1] images (3, H, W), rows[i][j] under column label j, row label i in red at its left tile."""
    pad, head = 3, 14
    sheet = Image.new("RGB", (len(columns) * (thumb + pad) + pad, head + len(rows) * (thumb + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for j, label in enumerate(columns):
        draw.text((pad + j * (thumb + pad), 1), label[:16], fill="black")
    for i, row in enumerate(rows):
        y = head + i * (thumb + pad)
        for j, img in enumerate(row):
            tile = Image.fromarray(to_uint8(img)).resize((thumb, thumb), Image.Resampling.BICUBIC)
            sheet.paste(tile, (pad + j * (thumb + pad), y))
        draw.text((pad + 2, y + 2), row_labels[i], fill="red")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, quality=quality)
