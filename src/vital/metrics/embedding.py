"""Where visualizations land in a judge's feature space: t-SNE of penultimate features, beside real images.

The penultimate features are the input of the last `nn.Linear` that runs in a forward pass (efficientnet-lite's
`_fc`, a ResNet's `fc`, a ViT's `heads.head`): found by execution order, so no per-architecture table is needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from vital.errors import VitalError
from vital.metrics.classify import Images, as_image_list, preprocess
from vital.models import VisionModel

MARKERS = "osD^v<>pP*hX"


def last_linear(model: VisionModel) -> str:
    """Dotted name of the last nn.Linear executed in a forward pass (the classifier head)."""
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda *_, n=n: order.append(n))
             for n, m in model.module.named_modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, model.size, model.size, device=model.device, dtype=model.dtype))
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise VitalError(f"{model.name} has no nn.Linear head to read penultimate features from; "
                         "use a classifier with a linear head as the embedding judge")
    return order[-1]


def penultimate_features(model: VisionModel, images: Images, batch_size: int = 32,
                         progress: bool = False) -> np.ndarray:
    """(N, D) inputs of the model's final linear layer for [0,1] images (preprocessed as in `topk_accuracy`)."""
    ims = as_image_list(images)
    head = dict(model.module.named_modules())[last_linear(model)]
    grabbed: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inp, _out: grabbed.append(inp[0].detach().flatten(1).float().cpu()))
    try:
        with torch.no_grad():
            for s in tqdm(range(0, len(ims), batch_size), desc="embedding features", disable=not progress,
                          leave=False):
                x = torch.stack([preprocess(model, im) for im in ims[s:s + batch_size]])
                model(x.to(model.device, model.dtype))
    finally:
        hook.remove()
    return torch.cat(grabbed).numpy().astype(np.float64)


def tsne(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE; perplexity min(30, (n-1)/3) so that tiny sets (a few images per method) still embed."""
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 3:
        raise VitalError(f"a t-SNE embedding needs at least 3 images, got {n}")
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def embedding_plot(model: VisionModel, groups: Mapping[str, tuple[Images, Sequence[int]]],
                   path: str | os.PathLike, class_names: Mapping[int, str] | None = None, seed: int = 0,
                   title: str | None = None, progress: bool = False) -> Path:
    """t-SNE scatter plot (PNG) of `groups`: {"vital": (images, classes), "real": (images, classes), ...}.

    Colour = group (method or real images), marker = class; later groups are drawn on top. Returns the PNG path."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError as e:
        raise VitalError("the embedding plot needs matplotlib: pip install matplotlib") from e
    feats, labels, classes = [], [], []
    for name, (images, cls) in groups.items():
        f = penultimate_features(model, images, progress=progress)
        if len(f) != len(cls):
            raise VitalError(f"group {name}: {len(f)} images but {len(cls)} classes")
        feats.append(f)
        labels += [name] * len(f)
        classes += [int(c) for c in cls]
    xy = tsne(np.concatenate(feats), seed)
    names = list(groups)
    uniq = sorted(set(classes))
    marker = {c: MARKERS[i % len(MARKERS)] for i, c in enumerate(uniq)}
    fig = Figure(figsize=(7, 6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = {}
    for i, name in enumerate(names):
        colours[name] = f"C{i % 10}"
        for c in uniq:
            sel = [j for j, (g, k) in enumerate(zip(labels, classes, strict=True)) if g == name and k == c]
            if sel:
                ax.scatter(xy[sel, 0], xy[sel, 1], c=colours[name], marker=marker[c], s=48, alpha=0.85,
                           edgecolors="black", linewidths=0.4, zorder=2 + i)
    method_handles = [Line2D([], [], marker="o", linestyle="", color=colours[n], label=n) for n in names]
    class_handles = [Line2D([], [], marker=marker[c], linestyle="", color="grey",
                            label=(class_names or {}).get(c, f"class {c}")) for c in uniq]
    first = ax.legend(handles=method_handles, title="images", loc="upper left", fontsize=8)
    ax.add_artist(first)
    ax.legend(handles=class_handles, title="class", loc="lower right", fontsize=8)
    ax.set_title(title or f"t-SNE of {model.name} penultimate features")
    ax.set_xticks([])
    ax.set_yticks([])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
