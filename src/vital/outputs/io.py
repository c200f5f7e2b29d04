"""Writing files: each one atomically (PNGs with the reference implementation's truncating uint8 conversion, RGBA
transparency images, JSON), contact sheets of visualizations beside their references, and the SHA-256 that names
a file's bytes in records and stores. The folders they go into are claimed and swapped by `vital.outputs.claim`."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageDraw

from vital._version import __version__


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, read in chunks (how records and stores name the files they used)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def to_uint8(img01: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0,1] -> (H, W, 3) uint8, truncating like the reference implementation."""
    return (img01.detach().float().clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write via a temporary file in the same folder and os.replace, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_png(img01: torch.Tensor, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: Image.fromarray(to_uint8(img01)).save(f, format="PNG"))


def transparency_rgba(img01: torch.Tensor, grad_acc: torch.Tensor, image_pct: float = 1.0,
                      alpha_pct: float = 98.0) -> np.ndarray:
    """RGBA (H, W, 4) uint8: the de-normalised image clipped to its own [p, 100-p] percentiles and stretched; alpha is
    the accumulated input-gradient magnitude, clipped at its `alpha_pct` percentile and divided by its max."""
    rgb = img01.detach().float().cpu()
    lo, hi = torch.quantile(rgb.flatten(), torch.tensor([image_pct / 100, 1 - image_pct / 100]))
    rgb = ((rgb.clamp(lo, hi) - lo) / (hi - lo).clamp_min(1e-8)).permute(1, 2, 0)
    a = grad_acc.detach().float().cpu()
    cap = torch.quantile(a.flatten(), alpha_pct / 100)
    a = a.clamp(max=cap.item())
    a = a / a.max().clamp_min(1e-12)
    rgba = torch.cat([rgb, a.unsqueeze(-1)], dim=-1)
    return (rgba * 255).to(torch.uint8).numpy()


def save_rgba(rgba: np.ndarray, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: Image.fromarray(rgba, mode="RGBA").save(f, format="PNG"))


def write_json(obj, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, default=str) + "\n").encode()))


LOSS_CURVE_POINTS = 100


def loss_curve(history: torch.Tensor, points: int = LOSS_CURVE_POINTS) -> list[float]:
    """The run record's loss curve: about `points` evenly spaced steps of a (steps, B) per-sample loss history,
    each the mean over the batch (for one target's column, its own loss)."""
    return history[:: max(1, len(history) // points)].mean(dim=1).tolist()


def versions(device: torch.device | str | None = None) -> dict:
    """What decides a run's rounding besides its options: the builds, and the processor that ran it (see
    `machine`). A rerun compares them with its own (`vital.run.repeat.reproducibility`)."""
    import torchvision

    return {"vital": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": sys.version.split()[0], "platform": platform.platform(), "machine": machine(device)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | str | None = None) -> dict:
    """The CPU model, the vectorised kernels PyTorch chose on it (`ATEN_CPU_CAPABILITY`), the thread count and, for
    a CUDA device, the GPU: each changes float rounding, so two runs agree bit for bit only where all of them do."""
    out = {"cpu": _cpu_model(), "kernels": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(dev)
    return out


def _thumb(im: Image.Image, size: int) -> Image.Image:
    im = im.convert("RGB")
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return im.resize((size, size), Image.Resampling.BICUBIC)


def checkerboard(size: int, cell: int = 8) -> Image.Image:
    yy, xx = np.mgrid[:size, :size]
    board = np.where(((yy // cell) + (xx // cell)) % 2 == 0, 200, 255).astype(np.uint8)
    return Image.fromarray(np.stack([board] * 3, -1))


def contact_sheet(rows: Sequence[tuple[str, Image.Image, Image.Image | None, Sequence[Image.Image]]],
                  path: str | os.PathLike, thumb: int = 160, max_refs: int = 6) -> Path:
    """One row per target: label, visualization, transparency (over a checkerboard), then references."""
    pad, label_h = 6, 18
    cols = 2 + max_refs
    sheet = Image.new("RGB", (pad + cols * (thumb + pad), len(rows) * (thumb + label_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, vis, rgba, refs) in enumerate(rows):
        y = pad + r * (thumb + label_h + pad)
        draw.text((pad, y), label, fill="black")
        y += label_h
        cells: list[Image.Image] = [_thumb(vis, thumb)]
        if rgba is not None:
            board = checkerboard(thumb)
            board.paste(rgba.convert("RGBA").resize((thumb, thumb), Image.Resampling.BICUBIC),
                        (0, 0), rgba.convert("RGBA").resize((thumb, thumb), Image.Resampling.BICUBIC))
            cells.append(board)
        else:
            cells.append(Image.new("RGB", (thumb, thumb), "white"))
        cells += [_thumb(im, thumb) for im in list(refs)[:max_refs]]
        for c, im in enumerate(cells):
            sheet.paste(im, (pad + c * (thumb + pad), y))
    path = Path(path)
    sheet.save(path)
    return path
