"""Receptive field of a layer of any CNN, measured rather than looked up, and the patch box it implies.

The measurement runs a float64 copy of the network made *linear-positive*: every activation and normalisation
module becomes the identity, max pooling becomes average pooling over the same window, every weight becomes a
positive average (1/fan-in) and every bias zero. In such a network the input gradient of one output unit is
strictly positive exactly on that unit's receptive field (no cancellation, no dead ReLU, no arg-max routing), so
the field is read off the gradient's support. Residual branches, asymmetric "same" padding, dilation and grouped
convolutions need no special cases. Normalisation statistics are ignored, as in the usual definition; a global gate
(squeeze-excitation) makes every unit see the whole input, and so does a field more than about twice the input:
both are reported as `is_global`, with the whole image as the patch.

Along each axis, unit i of the layer sees input pixels [left + i*stride, left + i*stride + size - 1] (edges
included, before clipping to the image). `left` and `size` come from the first unit's right end and the last unit's
left end, which lie inside the image long before a whole field does, so a field can be measured with an input
about half its size. The input is doubled (at most three times) until both ends are unclipped.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vital.errors import VitalError
from vital.features import FeatureExtractor

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
          nn.LocalResponseNorm)
_MAX_DOUBLINGS = 2


@dataclass(frozen=True)
class ReceptiveField:
    """Per axis (height, width): input pixels per output step, field size in pixels, and the centre of output
    position 0 in input pixel coordinates (pixel i has centre i). `is_global`: every unit sees the whole input of
    the measured size (then `size` is that input size and `offset` its centre)."""

    stride: tuple[int, int]
    size: tuple[int, int]
    offset: tuple[float, float]
    is_global: bool = False
    effective: tuple[int, int] | None = None  # side of the effective field (see `effective_size`), when measured

    def centre(self, h: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Input-pixel centres (y, x) of output positions (h, w)."""
        return self.offset[0] + h * self.stride[0], self.offset[1] + w * self.stride[1]

    def patch_size(self, image: int) -> tuple[int, int]:
        """Side of the patch shown for one unit: the effective field when measured, else the theoretical one (a
        global field: the whole image); at least 2 strides (a unit's own footprint and its neighbour's), at most
        the image."""
        if self.effective is not None:
            sides = self.effective
        elif self.is_global:
            return image, image
        else:
            sides = self.size
        h, w = (min(max(s, 2 * st), image) for s, st in zip(sides, self.stride, strict=True))
        return h, w

    def boxes(self, h: torch.Tensor, w: torch.Tensor, image: int) -> torch.Tensor:
        """Patch boxes (left, top, right, bottom), right/bottom exclusive, for output positions (h, w) of an
        image x image input: centred on the unit's field centre, then shifted to lie inside the image."""
        ph, pw = self.patch_size(image)
        cy, cx = self.centre(h.float(), w.float())  # exact: multiples of 0.5 far below 2**24
        # pixel i spans [i, i+1), so a centre c in pixel coordinates is the point c + 0.5
        top = torch.floor(cy + 0.5 - ph / 2 + 0.5).long().clamp(0, image - ph)
        left = torch.floor(cx + 0.5 - pw / 2 + 0.5).long().clamp(0, image - pw)
        return torch.stack([left, top, left + pw, top + ph], dim=-1)

    def as_dict(self) -> dict:
        return {"stride": list(self.stride), "size": list(self.size), "offset": list(self.offset),
                "is_global": self.is_global, "effective": None if self.effective is None else list(self.effective)}


def _linear_positive(module: nn.Module) -> nn.Module:
    """A float64 CPU copy of `module` in which every unit's input gradient is positive on its receptive field."""
    net = copy.deepcopy(module).to(device="cpu", dtype=torch.float64).eval()
    for name, m in list(net.named_modules()):
        if not name:
            continue
        replacement: nn.Module | None = None
        if isinstance(m, _NORMS) or type(m).__module__ == "torch.nn.modules.activation" and not isinstance(
                m, nn.MultiheadAttention):
            replacement = nn.Identity()
        elif isinstance(m, nn.MaxPool2d) and m.dilation in (1, (1, 1)):
            replacement = nn.AvgPool2d(m.kernel_size, m.stride, m.padding, ceil_mode=m.ceil_mode)
        elif isinstance(m, nn.AdaptiveMaxPool2d):
            replacement = nn.AdaptiveAvgPool2d(m.output_size)
        if replacement is not None:
            parent_name, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent_name) if parent_name else net, child, replacement)
    with torch.no_grad():
        for pname, p in net.named_parameters():
            if p.dim() >= 2:
                p.fill_(1.0 / p[0].numel())
            elif pname.rsplit(".", 1)[-1] == "bias":
                p.zero_()
            else:
                p.fill_(1.0)
    return net


def _support(grad: torch.Tensor) -> tuple[tuple[int, int], tuple[int, int]]:
    """(first, last) row and column where a (3, H, W) gradient is non-zero."""
    mask = grad.abs().sum(0) > 0
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    if rows.numel() == 0:
        raise VitalError("the layer's output does not depend on the input; pick another layer")
    return (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1]))


def receptive_field(module: nn.Module, layer: str, size: int = 224) -> ReceptiveField:
    """Measure the receptive field of the map view (B, C, H, W) of `layer`'s output (a dotted module name; a token
    grid for a ViT) for inputs of `size` x `size` pixels (padding may depend on the size; larger inputs are tried
    when the field does not fit)."""
    return receptive_fields(module, [layer], size)[layer]


def receptive_fields(module: nn.Module, layers: list[str], size: int = 224, cache: bool = True
                     ) -> dict[str, ReceptiveField]:
    """`receptive_field` of several layers, with one linear-positive copy and one forward per input size for all
    of them; results are cached on disk by architecture (`_cache_key`), so mining the same model again does not
    measure again."""
    found: dict[str, ReceptiveField] = {}
    keys = {n: _cache_key(module, n, size) for n in layers} if cache else {}
    stored = _read_cache() if cache else {}
    for n in layers:
        entry = stored.get(keys.get(n, ""))
        if isinstance(entry, dict):
            try:
                found[n] = ReceptiveField(tuple(entry["stride"]), tuple(entry["size"]),
                                          tuple(entry["offset"]), bool(entry["is_global"]))
            except (KeyError, TypeError, ValueError):
                pass  # a damaged entry: measured again
    todo = [n for n in layers if n not in found]
    if todo:
        net = _linear_positive(module)
        s = size
        for _ in range(_MAX_DOUBLINGS + 1):
            x = torch.full((3, 3, s, s), 0.01, dtype=torch.float64, device="cpu", requires_grad=True)
            outs = FeatureExtractor(net, todo, view="map")(x)
            for n in list(todo):
                rf = _measure(outs[n], x, s, retain=True)
                if rf is not None:
                    found[n] = rf
                    todo.remove(n)
            if not todo:
                break
            s *= 2
        if todo:
            raise VitalError(f"could not measure the receptive field of '{todo[0]}' with inputs up to {s} px; "
                             "is its output map smaller than 2x2?")
        if cache:
            _write_cache({keys[n]: found[n].as_dict() for n in layers if n in keys})
    return {n: found[n] for n in layers}


def _measure(out: torch.Tensor, x: torch.Tensor, s: int, retain: bool) -> ReceptiveField | None:
    """The field read off the input gradient of three units of `out` (None: clipped, try a larger input)."""
    hl, wl = out.shape[2] - 1, out.shape[3] - 1
    units = [(0, 0), (min(1, hl), min(1, wl)), (hl, wl)]
    total = torch.stack([out[b, :, h, w].sum() for b, (h, w) in enumerate(units)]).sum()
    (grad,) = torch.autograd.grad(total, x, retain_graph=retain)
    first, second, last = (_support(grad[b]) for b in range(3))
    if all(first[a][1] == s - 1 and last[a][0] == 0 for a in (0, 1)):
        # the first unit reaches the far edge and the last the near one: every unit sees the whole input
        stride = (max(1, round(s / out.shape[2])), max(1, round(s / out.shape[3])))
        return ReceptiveField(stride, (s, s), ((s - 1) / 2, (s - 1) / 2), is_global=True)
    unclipped = all(first[a][1] < s - 1 and second[a][1] < s - 1 and last[a][0] > 0 for a in (0, 1))
    if hl >= 1 and wl >= 1 and unclipped:
        stride = (second[0][1] - first[0][1], second[1][1] - first[1][1])
        if stride != (round(s / out.shape[2]), round(s / out.shape[3])):
            # not one field shifted by a stride (Swin's windows): no theoretical field; a global one, so that
            # the effective field is measured for patches
            nominal = (max(1, round(s / out.shape[2])), max(1, round(s / out.shape[3])))
            return ReceptiveField(nominal, (s, s), ((s - 1) / 2, (s - 1) / 2), is_global=True)
        left = (last[0][0] - hl * stride[0], last[1][0] - wl * stride[1])
        rf = (first[0][1] - left[0] + 1, first[1][1] - left[1] + 1)
        return ReceptiveField(stride, rf, (left[0] + (rf[0] - 1) / 2, left[1] + (rf[1] - 1) / 2))
    return None


# ---- the disk cache ------------------------------------------------------------------------------------------------


def cache_path() -> Path:
    """Where measured fields are kept: $VITAL_CACHE, else $XDG_CACHE_HOME/vital, else ~/.cache/vital."""
    root = os.environ.get("VITAL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vital")
    return Path(root) / "receptive_fields.json"


def _file_stamp(module_name: str) -> str:
    """A Python module's file, size and modification time: its code, cheaply (no source is read)."""
    path = getattr(sys.modules.get(module_name), "__file__", None)
    if not path:
        return module_name
    try:
        st = os.stat(path)
    except OSError:
        return module_name
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


_KEYS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, int], str]] = weakref.WeakKeyDictionary()


def _cache_key(module: nn.Module, layer: str, size: int) -> str:
    """The architecture (the module tree as printed, and the files of every module class and of this code: a field
    depends on nothing else) with the layer and input size."""
    known = _KEYS.setdefault(module, {})
    if (layer, size) not in known:
        classes = sorted({f"{c.__module__}.{c.__qualname__}|{_file_stamp(c.__module__)}" for c in
                          (type(m) for m in module.modules())})
        parts = [repr(module), layer, str(size), _file_stamp(__name__), *classes]
        known[(layer, size)] = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return known[(layer, size)]


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(entries: dict) -> None:
    """Add entries (best effort: an unwritable cache only means measuring again next time)."""
    try:
        path = cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        from vital.outputs.io import write_json

        write_json({**_read_cache(), **entries}, path)
    except OSError:
        pass


EFFECTIVE_MASS = 0.75


def effective_field(module: nn.Module, layer: str, images: torch.Tensor, mass: float = EFFECTIVE_MASS
                    ) -> tuple[tuple[int, int], tuple[float, float]]:
    """Side (height, width) of the effective receptive field of `layer` (Luo et al., NeurIPS 2016): the smallest
    square, centred on the centre of mass of the centre unit's input-gradient magnitude (all channels, averaged
    over `images` in model input space, real weights), whose pixels (by their centres) hold `mass` of it. Also
    returns the offset, the centre of unit (0, 0) in input pixels, measured the same way. Deep layers of a CNN see
    the whole input in theory but depend mostly on a much smaller centre: that centre is the patch that shows what
    a unit responds to."""
    x = images.detach().clone().requires_grad_(True)
    out = FeatureExtractor(module, [layer], view="map")(x)[layer]
    h, w = out.shape[2] // 2, out.shape[3] // 2
    (grad,) = torch.autograd.grad(out[:, :, h, w].sum(), x)
    g = grad.detach().abs().sum(1).mean(0).double()  # (H, W)
    total = float(g.sum())
    if total == 0:
        raise VitalError(f"the centre unit of '{layer}' does not depend on the input; pick another layer")
    ys, xs = torch.nonzero(g > 0, as_tuple=True)
    weights = g[ys, xs]
    cy, cx = float((ys * weights).sum() / total), float((xs * weights).sum() / total)  # pixel i has centre i
    stride = (x.shape[2] / out.shape[2], x.shape[3] / out.shape[3])
    offset = (cy - h * stride[0], cx - w * stride[1])
    for side in range(1, 2 * max(g.shape) + 2):
        inside = ((ys - cy).abs() < side / 2) & ((xs - cx).abs() < side / 2)
        if float(weights[inside].sum()) >= mass * total * (1 - 1e-9):
            return (side, side), offset
    return (g.shape[0], g.shape[1]), offset


def _weights_fingerprint(module: nn.Module) -> str:
    """The module's parameters and buffers, cheaply: each tensor's name, shape, sum and a strided sample."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in (*module.named_parameters(), *module.named_buffers()):
            flat = t.detach().flatten()
            sample = flat[::max(1, flat.numel() // 1024)].double().cpu().numpy()
            h.update(f"{name}:{tuple(t.shape)}:{float(flat.double().sum())!r}".encode())
            h.update(sample.tobytes())
    return h.hexdigest()


def effective_fields(module: nn.Module, layers: list[str], images: torch.Tensor | Callable[[], torch.Tensor],
                     size: int, mass: float = EFFECTIVE_MASS, cache: bool = True, sample_key: str | None = None
                     ) -> dict[str, tuple[tuple[int, int], tuple[float, float]]]:
    """`effective_field` of several layers on the same images (a tensor, or a function that makes it: it is then
    only called when something must be measured). The results are kept in the disk cache under the architecture,
    the weights, the images (`sample_key`, e.g. the files' names, sizes and times; default: a hash of the pixels)
    and the mass: mining the same data with the same model again (a small folder, another k, an atlas rebuild) runs
    no gradient pass and decodes no sample."""
    sample = images if isinstance(images, torch.Tensor) else None

    def pixels() -> torch.Tensor:
        nonlocal sample
        if sample is None:
            assert not isinstance(images, torch.Tensor)
            sample = images()
        return sample

    found: dict[str, tuple[tuple[int, int], tuple[float, float]]] = {}
    keys: dict[str, str] = {}
    if cache:
        data = sample_key or hashlib.sha256(pixels().detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        weights = _weights_fingerprint(module)
        keys = {n: "effective:" + hashlib.sha256(f"{_cache_key(module, n, size)}|{weights}|{data}|{mass!r}"
                                                 .encode()).hexdigest() for n in layers}
        stored = _read_cache()
        for n in layers:
            entry = stored.get(keys[n], {})
            try:
                (h, w), (y, x) = entry["side"], entry["offset"]
                found[n] = ((int(h), int(w)), (float(y), float(x)))
            except (KeyError, TypeError, ValueError):
                pass  # absent or damaged: measured
    measured = {n: effective_field(module, n, pixels(), mass) for n in layers if n not in found}
    if cache and measured:
        _write_cache({keys[n]: {"side": list(side), "offset": list(offset)} for n, (side, offset) in measured.items()})
    return {n: found.get(n) or measured[n] for n in layers}


def effective_size(module: nn.Module, layer: str, images: torch.Tensor, mass: float = EFFECTIVE_MASS
                   ) -> tuple[int, int]:
    """The side of `effective_field`."""
    return effective_field(module, layer, images, mass)[0]
