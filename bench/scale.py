"""Throughput of batch jobs: batched against one target at a time, and Ray with 1 and 2 workers against the
in-process run on the same targets (scaling efficiency = Ray-2 throughput / (2 x Ray-1 throughput)).

Every configuration runs the same job (classes 0..N-1 of the model, VITAL, references from scikit-image's photo
folder) into a fresh folder; targets per hour come from the job summary, so they include model loading in the
Ray workers, as in a real job. Ray clusters are local, loopback only, started before the timing. A Ray worker
computes with one thread (Ray sets OMP_NUM_THREADS=1 for a one-CPU task); `--threads` sets the in-process thread
count (default: torch's), and on a machine shared with other work, one thread per core avoids oversubscription.
Usage: python bench/scale.py [--model efficientnet_lite0] [--targets 6] [--steps 8] [--batch-size 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

import vital
from vital.jobs import Job, ModelSpec, References, run_job
from vital.references.photos import photo_path


def make_job(a: argparse.Namespace, batch_size: int) -> Job:
    refs = os.path.dirname(photo_path("chelsea.png"))
    return Job(model=ModelSpec(a.model, a.weights), targets=tuple(vital.Class(k) for k in range(a.targets)),
               steps=a.steps, seed=0, references=References("folder", refs, n=8), options={"warmup": 1},
               device=a.device, batch_size=batch_size)


def per_hour(job: Job, ray: str | None = None) -> float:
    with tempfile.TemporaryDirectory(prefix="vital-scale-") as out:
        summary = run_job(job, out, ray=ray, progress=False)
    if summary["failed"]:
        raise SystemExit(f"job failed: {summary['failures'][0]}")
    return summary["targets_per_hour"]


def ray_per_hour(job: Job, workers: int) -> float:
    import ray

    ray.init(num_cpus=workers, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        return per_hour(job, ray="auto")
    finally:
        ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--weights", default="default")
    p.add_argument("--device", default=None)
    p.add_argument("--targets", type=int, default=6)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads of the in-process runs")
    p.add_argument("--no-ray", action="store_true", help="only the in-process comparison")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = {"in-process, one at a time": per_hour(make_job(a, 1)),
            f"in-process, batches of {a.batch_size}": per_hour(make_job(a, a.batch_size))}
    if not a.no_ray:
        rows["ray, 1 worker"] = ray_per_hour(make_job(a, a.batch_size), 1)
        rows["ray, 2 workers"] = ray_per_hour(make_job(a, a.batch_size), 2)
    print(f"{a.model}, {a.targets} class targets, {a.steps} steps, {os.cpu_count()} CPU cores, in-process "
          f"threads {torch.get_num_threads()}, Ray workers 1 thread each")
    for name, value in rows.items():
        print(f"  {name:<28} {value:10.1f} targets/hour")
    base = rows[f"in-process, batches of {a.batch_size}"]
    print(f"batched / one at a time: {base / rows['in-process, one at a time']:.2f}")
    if not a.no_ray:
        print(f"ray 1 worker / in-process: {rows['ray, 1 worker'] / base:.2f}")
        print(f"ray 2 workers / in-process: {rows['ray, 2 workers'] / base:.2f}")
        print(f"scaling efficiency 2 workers: {rows['ray, 2 workers'] / (2 * rows['ray, 1 worker']):.2f}")


if __name__ == "__main__":
    main()
