"""The files of a run folder: each image, its transparency map (RGBA), small copies of in-memory references, the
run record (`vital.outputs.record`) with the list of what was written, and a contact sheet. `vital.outputs.claim` decides where
the folder goes and swaps it into place; this module only fills it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from vital.outputs.io import contact_sheet, save_png, save_rgba, to_uint8
from vital.outputs.record import Output

if TYPE_CHECKING:
    from vital.run.execute import Result

THUMBNAILS = 6  # reference images beside each visualization on the contact sheet


def write_run_folder(result: Result, out: Path, sheet: bool = True) -> dict[str, list[Path]]:
    """Write `result` into the (empty) folder `out`; returns the paths written, by kind."""
    images, alphas, rows, outputs = [], [], [], []
    per = max(result.copies) + 1 if result.copies else 1
    for i, t in enumerate(result.targets):
        stem = result.slug(i)
        images.append(save_png(result.images[i], out / f"{stem}.png"))
        rgba = result.transparency(i)
        alphas.append(save_rgba(rgba, out / f"{stem}_transparency.png"))
        refs = result.references[i]
        ref_imgs = refs.thumbnails(THUMBNAILS) if refs is not None else []
        thumbs = []
        if refs is not None and refs.images:  # in-memory references: keep small copies to show beside the image
            (out / "references").mkdir(exist_ok=True)
            for j, im in enumerate(ref_imgs):
                path = out / "references" / f"{stem}_{j:02d}.jpg"
                im.convert("RGB").resize((112, 112), Image.Resampling.BICUBIC).save(path, quality=90)
                thumbs.append(str(path.relative_to(out)))
        rows.append((result.labels[i], Image.fromarray(to_uint8(result.images[i])), Image.fromarray(rgba, "RGBA"),
                     ref_imgs))
        outputs.append(Output(str(t), i // per, i % per, result.labels[i], images[-1].name, alphas[-1].name, thumbs))
    if result.run is None:
        raise ValueError("a result without a run record cannot be saved")
    record = replace(result.run, outputs=outputs)  # the result's own record stays as the run made it
    paths = {"images": images, "transparency": alphas, "record": [record.write(out)]}
    if sheet:
        paths["sheet"] = [contact_sheet(rows, out / "contact_sheet.png")]
    return paths

