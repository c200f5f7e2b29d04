"""Run a batch job: plan batches, skip finished targets, run the rest in this process or as Ray tasks, write each
result atomically as it arrives, show one progress bar for the whole job and write a summary.

The batch plan (targets grouped by kind and layer, then cut into batches of the job's batch size) is fixed by the
first run and kept in job.json: a target's result depends on the batch it was optimised in (its position gives its
initial image), so a rerun redoes an unfinished batch exactly as an uninterrupted run would have, and writes only
the targets that are not already complete.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vital.errors import VitalError
from vital.jobs.job_folder import BatchLayout
from vital.jobs.spec import Job
from vital.jobs.work import TargetFiles, Worker
from vital.methods import get_method
from vital.targets import Channel, Target


def plan(targets: Sequence[Target], batch_size: int) -> list[list[Target]]:
    """Targets grouped (classes together, channels per layer: a batch optimises one layer's channels), in order of
    first appearance, each group cut into consecutive batches of `batch_size`."""
    groups: dict[Any, list[Target]] = {}
    for t in targets:
        groups.setdefault(("channel", t.layer) if isinstance(t, Channel) else type(t).__name__, []).append(t)
    return [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


class LocalPool:
    """Runs batches (or mining shards) one after another in this process, with one `Worker` for the job: the model
    is built once and released when the pool closes."""

    name = "in-process"

    def __init__(self) -> None:
        self.worker = Worker()

    def __enter__(self) -> LocalPool:
        return self

    def __exit__(self, *exc) -> None:
        self.worker.close()

    def suggest_batch_size(self, job: Job, probe: Sequence[Target]) -> tuple[int, dict]:
        return self.worker.suggest_batch_size(job, probe)

    def map(self, method: str, items: Sequence[tuple[Any, tuple]], done, failed) -> None:
        """Call the worker's `method(*args)` for each (item, args); its value goes to `done(value)`, its error to
        `failed(item, reason)`: one bad item does not stop the others (it is reported and redone on a rerun)."""
        call = getattr(self.worker, method)
        for item, args in items:
            try:
                value = call(*args)
            except Exception as e:
                failed(item, f"{type(e).__name__}: {e}")
            else:
                done(value)

    def run(self, job: Job, todo: Sequence[tuple[int, list[Target]]], done, failed) -> None:
        self.map("run_batch", [(batch, (job, batch, index)) for index, batch in todo], done, failed)


class _Tracker:
    """Writes results as they arrive, counts them and drives the progress bar."""

    def __init__(self, layout: BatchLayout, complete: set[str], total: int, progress: bool):
        self.layout, self.complete = layout, complete
        self.done = 0
        self.failures: list[dict[str, str]] = []
        self.bar = tqdm(total=total, initial=len(complete), unit="target", desc="vital batch", disable=not progress,
                        dynamic_ncols=True)

    def finished(self, outputs: Sequence[TargetFiles]) -> None:
        for out in outputs:
            if out.slug in self.complete:  # finished by an earlier run: never written twice
                continue
            self.layout.write(out.slug, out.files)
            self.complete.add(out.slug)
            self.done += 1
            self.bar.update(1)

    def failed(self, batch: Sequence[Target], reason: str) -> None:
        for t in batch:
            if t.slug() not in self.complete:
                self.failures.append({"target": str(t), "reason": reason.strip().splitlines()[-1][:500]})


def make_pool(ray: str | None, retries: int, job: Job | Any) -> LocalPool | Any:
    """The pool that runs a job's work: in this process (`ray` None) or on Ray actors."""
    if ray is None:
        return LocalPool()
    from vital.jobs.ray_backend import RayPool

    return RayPool(ray, retries, job.model.import_root())


def run_job(job: Job, out: str | os.PathLike, *, ray: str | None = None, retries: int = 3,
            progress: bool = True) -> dict[str, Any]:
    """Run (or resume) `job` into `out`; `ray`: None (this process), "local", "auto" or a cluster address. Returns
    the summary also written to `<out>/summary.json`: done, skipped (complete before), failed (with reasons)."""
    start = time.perf_counter()
    layout = BatchLayout(out)
    manifest = layout.prepare(job.identity(), "visualize")
    if get_method(job.method).couples_batch and job.batch_size not in (None, 1):
        raise VitalError(f"method {job.method} couples the samples of a batch (a batch statistic), so its targets run "
                         f"one at a time; drop --batch-size {job.batch_size}")
    if manifest is not None and job.batch_size not in (None, manifest["batch_size"]):
        raise VitalError(f"{out} was planned with batch size {manifest['batch_size']}, not {job.batch_size}; resume "
                         "with the same --batch-size (or none) or use another --out")
    with make_pool(ray, retries, job) as pool:
        if manifest is None:
            if get_method(job.method).couples_batch:  # a batch statistic: each target alone, as it would run alone
                size, rule = 1, {"rule": f"method {job.method} couples the samples of a batch"}
            elif job.batch_size is not None:
                size, rule = job.batch_size, {"rule": "given"}
            else:
                size, rule = pool.suggest_batch_size(job, plan(job.targets, 2)[0])
            manifest = {"kind": "visualize", "job": job.identity(), "batch_size": size, "batch_rule": rule,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
            layout.write_manifest(manifest)
        batches = plan(job.targets, manifest["batch_size"])
        complete = {t.slug() for t in job.targets if layout.complete(t.slug())}
        skipped = len(complete)
        todo = [(i, b) for i, b in enumerate(batches) if any(t.slug() not in complete for t in b)]
        tracker = _Tracker(layout, complete, len(job.targets), progress)
        interrupted = False
        try:
            pool.run(job, todo, tracker.finished, tracker.failed)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            tracker.bar.close()
            seconds = time.perf_counter() - start
            summary = {"targets": len(job.targets), "done": tracker.done, "skipped": skipped,
                       "failed": len(tracker.failures), "failures": tracker.failures, "interrupted": interrupted,
                       "batch_size": manifest["batch_size"], "batches_run": len(todo), "backend": pool.name,
                       "seconds": round(seconds, 3),
                       "targets_per_hour": round(3600 * tracker.done / seconds, 2) if seconds else None}
            layout.write_summary(summary)
    return summary


def summary_lines(summary: dict[str, Any], out: str | os.PathLike) -> list[str]:
    """What the command line prints at the end of a job."""
    lines = [f"{summary['done']} done, {summary['skipped']} skipped (already complete), {summary['failed']} failed "
             f"of {summary['targets']} targets in {summary['seconds']:.1f}s ({summary['backend']})"]
    lines += [f"  failed {f['target']}: {f['reason']}" for f in summary["failures"]]
    lines.append(f"results: {Path(out)}  summary: {Path(out) / 'summary.json'}")
    return lines
