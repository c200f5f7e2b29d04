"""The worker side of a job, the same in-process and in a Ray actor: a `Worker` owns the models of one job (a
`ModelCache`: built and sped up on first use, released with the worker when the job ends), builds a batch's
references, runs the batch and hands back each target's files as bytes (the driver writes them).

Batch size rule (`batch_size_for`): on CUDA, one probe step with one and with two targets measures the memory a
run needs beyond the loaded model (base) and per extra target (slope); the batch is the largest B with
base + B * slope <= 85% of the memory free before the probe, capped at 64. On the CPU a batch gains little (the
cores are busy with one image already), so the batch is a fixed `CPU_BATCH` unless the job sets one.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vital.jobs.spec import Job, MineJob, ModelSpec
from vital.models.zoo import VisionModel, resolve_device
from vital.references.images import ReferenceSet
from vital.run.execute import visualize
from vital.run.speed import Acceleration, SpeedOptions, accelerate, autocast
from vital.targets import Target

CPU_BATCH = 4
HEADROOM = 0.85
MAX_BATCH = 64


@dataclass
class TargetFiles:
    """One finished target: its folder name and the bytes of every file in it (paths relative to the folder)."""

    slug: str
    target: str
    files: dict[str, bytes]


class ModelCache:
    """The model of a job, built (and sped up, with its speed check) on first use and reused by every later batch
    or shard; asking for another model releases the one held (its speed options undone). Owned by a `Worker`."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.model: VisionModel | None = None
        self.acceleration: Acceleration | None = None
        self.builds = 0

    def get(self, spec: ModelSpec, device: str, speed: SpeedOptions) -> tuple[VisionModel, dict]:
        """(model, speed report) for `spec` on `device` with `speed`."""
        key = (spec, device, speed)
        if key != self.key:
            self.clear()
            model = spec.load(device)
            self.acceleration = accelerate(model, speed)
            self.key, self.model = key, model
            self.builds += 1
        assert self.model is not None and self.acceleration is not None
        return self.model, self.acceleration.report

    def clear(self) -> None:
        if self.acceleration is not None:
            self.acceleration.remove()
        self.key = self.model = self.acceleration = None


def references_for(job: Job, targets: Sequence[Target]) -> list[ReferenceSet | None]:
    return job.references.resolve(targets, seed=job.seed)


def _read_tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Worker:
    """Runs a job's batches (and mining shards), in this process or as a Ray actor, with one `ModelCache` for the
    length of the job. A context manager: leaving it releases the model."""

    def __init__(self) -> None:
        self.models = ModelCache()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.models.clear()

    def model(self, spec: ModelSpec, device: str | None,
              speed: SpeedOptions | None = None) -> tuple[VisionModel, dict]:
        """(model, speed report): built on the first call of the job, then the same object."""
        return self.models.get(spec, resolve_device(device), speed or SpeedOptions())

    def run_batch(self, job: Job, targets: Sequence[Target], batch_index: int = 0,
                  progress: bool = False) -> list[TargetFiles]:
        """Optimise `targets` together as one batch and return the files of each."""
        model, speed_report = self.model(job.model, job.device, job.speed)
        refs = references_for(job, targets)
        with autocast(model, job.speed):
            result = visualize(model, list(targets), refs, method=job.method, steps=job.steps, setting=job.setting,
                               seed=job.seed, progress=progress, **job.options)
        batch = {"index": batch_index, "targets": [str(t) for t in targets], "speed": speed_report}
        out = []
        for i, t in enumerate(targets):
            with tempfile.TemporaryDirectory(prefix="vital-target-") as tmp:
                result.select(i, batch).save(tmp, sheet=False)
                out.append(TargetFiles(t.slug(), str(t), _read_tree(Path(tmp))))
        return out

    def suggest_batch_size(self, job: Job, probe_targets: Sequence[Target]) -> tuple[int, dict]:
        """(batch size, how it was chosen) for this job on this process's device; see the module docstring."""
        device = torch.device(resolve_device(job.device))
        if device.type != "cuda":
            return CPU_BATCH, {"rule": f"fixed {CPU_BATCH} on {device.type}"}
        model, _ = self.model(job.model, str(device), job.speed)
        return _probe_batch_size(job, model, device, probe_targets)

    def mine_shard(self, job: MineJob, root: str, files: list[str], folder: str) -> int:
        """Mine one shard (resuming its own checkpoint if there is one); returns its number of images."""
        from vital.references.mining import mine
        from vital.references.mining_merge import link_shard

        model, _ = self.model(job.model, job.device)
        images = link_shard(root, files, Path(folder) / "images")
        mine(model, list(job.layers), images, k=job.k, n_images=job.n_images, out=Path(folder) / "store",
             batch_size=job.batch_size, progress=False)
        return len(files)


def batch_size_for(free_bytes: int, base_bytes: int, per_target_bytes: int, headroom: float = HEADROOM,
                   cap: int = MAX_BATCH) -> int:
    """The largest B with base + B * per_target <= headroom * free, at least 1 and at most `cap`."""
    room = headroom * free_bytes - base_bytes
    return max(1, min(cap, int(room // max(1, per_target_bytes))))


def _probe_batch_size(job: Job, model: VisionModel, device: torch.device,
                      probe_targets: Sequence[Target]) -> tuple[int, dict]:
    """The CUDA rule: one probe step with one and with two targets gives the memory base and slope."""
    refs = references_for(job, probe_targets[:2])
    free = torch.cuda.mem_get_info(device)[0]
    peaks = []
    for n in (1, 2)[: len(probe_targets)]:
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with autocast(model, job.speed):
            visualize(model, list(probe_targets[:n]), refs[:n], method=job.method, steps=1, setting=job.setting,
                      seed=job.seed, progress=False, **job.options)
        peaks.append(torch.cuda.max_memory_allocated(device) - start)
    slope = peaks[1] - peaks[0] if len(peaks) == 2 and peaks[1] > peaks[0] else peaks[0]
    size = batch_size_for(free, peaks[0] - slope, slope)
    return size, {"rule": "cuda probe", "free_bytes": free, "base_bytes": peaks[0] - slope,
                  "per_target_bytes": slope, "headroom": HEADROOM, "cap": MAX_BATCH}
