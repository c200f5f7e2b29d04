"""A mining job over a large folder: contiguous shards mined in parallel (in this process one after another, or
as Ray tasks), each a resumable store of its own under `<out>/shards/`, merged into the store at `<out>` that a
single pass would have written (see `vital.references.mining_merge`). Under Ray, the image folder and `--out`
must be on a filesystem that every node sees.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from vital.errors import VitalError
from vital.jobs.job_folder import BatchLayout
from vital.jobs.runner import make_pool
from vital.jobs.spec import MineJob
from vital.references.images import list_images
from vital.references.mining import MiningStore
from vital.references.mining_merge import merge_stores, shard_bounds, store_complete


def _identity(job: MineJob, root: Path) -> dict:
    return {"model": {"name": job.model.name, "weights": job.model.weights, "factory": job.model.factory},
            "layers": list(job.layers), "images": str(root), "k": job.k, "n_images": job.n_images,
            "batch_size": job.batch_size, "shards": job.shards}


def run_mining(job: MineJob, out: str | os.PathLike, *, ray: str | None = None, retries: int = 3,
               progress: bool = True) -> tuple[MiningStore, dict]:
    """Mine `job` into the store at `out` (shards under `out/shards`); a rerun skips finished shards and resumes
    unfinished ones. Returns the merged store and the job summary (also written to `out/shards/summary.json`)."""
    start = time.perf_counter()
    root = Path(job.images).expanduser().resolve()
    files = [p.relative_to(root).as_posix() for p in list_images(root)]
    if not files:
        raise VitalError(f"image folder {root} holds no images; point --images at a folder of JPEG/PNG files")
    layout = BatchLayout(Path(out) / "shards")
    if layout.prepare(_identity(job, root), "mine") is None:
        layout.write_manifest({"kind": "mine", "job": _identity(job, root)})
    bounds = shard_bounds(len(files), job.shards, job.batch_size)
    folders = [layout.out / f"{i:04d}" for i in range(len(bounds))]
    todo = [(i, (a, b)) for i, (a, b) in enumerate(bounds) if not store_complete(folders[i] / "store")]
    bar = tqdm(total=len(files), initial=len(files) - sum(b - a for _, (a, b) in todo), unit="img",
               desc="vital mine", disable=not progress, dynamic_ncols=True)
    failures: list[dict] = []
    done = bar.update

    def failed(shard: int, reason: str) -> None:
        failures.append({"shard": shard, "reason": reason})

    try:
        with make_pool(ray, retries, job) as pool:  # a failed shard is reported and resumes on a rerun
            pool.map("mine_shard", [(i, (job, str(root), files[a:b], str(folders[i]))) for i, (a, b) in todo],
                     done, failed)
    finally:
        bar.close()
    summary = {"images": len(files), "shards": len(bounds), "shards_run": len(todo), "failed": len(failures),
               "failures": failures, "seconds": round(time.perf_counter() - start, 3), "backend": ray or "in-process"}
    layout.write_summary(summary)
    if failures:
        raise VitalError(f"{len(failures)} shard(s) failed ({failures[0]['reason']}); rerun the same command to "
                         "resume them")
    return merge_stores([f / "store" for f in folders], out, root), summary
