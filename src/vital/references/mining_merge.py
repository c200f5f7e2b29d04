"""Sharded mining: cut an image folder into contiguous shards, mine each on its own (a worker each), and merge
the per-shard top-k stores into the store a single pass would have produced.

Why the merge is exact: every running list of a store is ordered by score, ties going to the earlier image, and
each shard covers a contiguous run of the folder's sorted files. Concatenating the shards' lists in folder order
and stable-sorting by score therefore orders ties by global image index, as the single pass does; and anything a
shard dropped had at least m better-or-equal, earlier entries in that shard, so it cannot be in the global top-m.
Shards are cut at multiples of the batch size, so each image is scored in the same batch as in a single pass and
the scores are bit-identical on a deterministic device.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vital.errors import VitalError
from vital.outputs.io import atomic_write, write_json
from vital.references.store import MiningStore
from vital.references.store_files import (
    FILES,
    FORMAT,
    HEADER_KEYS,
    INDEX,
    STATE,
    final_tensors,
    load_shard,
    store_index,
)


def shard_bounds(count: int, shards: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) of up to `shards` contiguous, non-empty shards of `count` images, cut at batch boundaries."""
    if count < 1 or shards < 1 or batch_size < 1:
        raise VitalError(f"need at least one image, shard and batch, got {count}, {shards}, {batch_size}")
    batches = -(-count // batch_size)
    shards = min(shards, batches)
    cuts = [round(i * batches / shards) * batch_size for i in range(shards + 1)]
    return [(a, min(b, count)) for a, b in zip(cuts, cuts[1:], strict=False)]


def link_shard(root: str | os.PathLike, files: Sequence[str], folder: str | os.PathLike) -> Path:
    """A folder of symbolic links to `files` (relative to `root`, same relative paths), which `mine` reads as an
    image folder: the shard then skips unreadable files and names images exactly as a single pass does."""
    root, folder = Path(root).resolve(), Path(folder)
    for name in files:
        link = folder / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(root / name)
    return folder


def merge_stores(shards: Sequence[str | os.PathLike], out: str | os.PathLike,
                 images: str | os.PathLike) -> MiningStore:
    """Merge complete shard stores (in folder order, each over a contiguous run of the sorted files of the folder
    `images`) into one store at `out`, equal to `mine(..., images, out=out)` in one pass."""
    if not shards:
        raise VitalError("no shard stores to merge")
    loaded = [load_shard(Path(p)) for p in shards]
    first = loaded[0][0]
    for (index, _, _), path in zip(loaded[1:], shards[1:], strict=True):
        keys = [k for k in HEADER_KEYS if k != "dataset" and index[k] != first[k]]
        if keys:
            raise VitalError(f"shard {path} differs from {shards[0]} in {', '.join(keys)}; mine every shard alike")
    names = [name for _, _, files in loaded for name in files]
    offsets = np.cumsum([0, *[len(files) for _, _, files in loaded]]).tolist()
    k, n_images = first["k"], first["n_images"]
    m = max(k, n_images)
    lists: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for layer in first["layers"]:
        parts = [state["lists"][layer] for _, state, _ in loaded]
        scores = torch.cat([p[0] for p in parts], 1)
        image_index = torch.cat([p[1] + offset for p, offset in zip(parts, offsets, strict=False)], 1)
        boxes = torch.cat([p[2] for p in parts], 1)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :m]
        lists[layer] = (scores.gather(1, order), image_index.gather(1, order),
                        boxes.gather(1, order.unsqueeze(-1).expand(-1, -1, 4)))
    root = Path(images).expanduser().resolve()
    dataset = {"kind": "folder", "root": str(root), "count": len(names),
               "sha256": hashlib.sha256("\n".join(names).encode()).hexdigest()}
    header = {"format": FORMAT, **{key: first[key] for key in HEADER_KEYS}, "dataset": dataset}
    seen = sum(state["seen"] for _, state, _ in loaded)
    skipped = [name for _, state, _ in loaded for name in state["skipped"]]
    created = min(state["created"] for _, state, _ in loaded)
    final = {layer: final_tensors(ls, k, n_images) for layer, ls in lists.items()}
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    saving = {"seen": seen, "skipped": skipped, "created": created, "complete": True, "lists": lists, "names": [],
              "final": final}
    write_json(names, path / FILES)
    atomic_write(path / STATE, lambda f: torch.save(saving, f))
    write_json(store_index(header, seen, skipped, True, created), path / INDEX)  # last: the store is complete only now
    return MiningStore(store_index(header, seen, skipped, True, created), final, names, path, root)


def store_complete(path: str | os.PathLike) -> bool:
    try:
        return bool(json.loads((Path(path) / INDEX).read_text()).get("complete"))
    except (OSError, ValueError):
        return False
