"""Batches and shards on Ray actors: one `Worker` actor per GPU of the cluster (per CPU without GPUs), created for
the length of a job and killed at its end. Each actor builds the job's model once and keeps it for every batch it
runs, and hands its results back to the driver, which alone writes them. Work goes to whichever actor is idle. An
actor whose process dies is restarted by Ray and its batch retried (`retries` times); only the attempt that
returns delivers files, so nothing is lost or written twice. Ray is imported only here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from vital.errors import VitalError


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise VitalError("--ray needs Ray: pip install 'vital[ray]'") from e
    return ray


class RayPool:
    """Connects to (or starts) a Ray cluster for the length of a job. `address`: "local" starts a cluster on this
    machine (loopback only), "auto" joins the one started with `ray start`, anything else is a cluster address.
    A session that is already connected (ray.init in the caller) is used as it is and left open."""

    def __init__(self, address: str, retries: int = 3, import_root: str | None = None):
        self.ray = _import_ray()
        self.address, self.retries = address, retries
        self.owned = not self.ray.is_initialized()
        self.env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
            p for p in (import_root, os.environ.get("PYTHONPATH")) if p)}} if import_root else None
        self.name = f"ray {address}"
        self.actors: list = []

    def __enter__(self) -> RayPool:
        if self.owned:
            try:
                if self.address == "local":
                    self.ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
                else:
                    self.ray.init(address=self.address, log_to_driver=False)
            except ConnectionError as e:
                raise VitalError(f"cannot reach a Ray cluster at '{self.address}' ({e}); start one with `ray start "
                                 "--head` or use --ray local") from e
        resources = self.ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        self.slots = gpus if gpus >= 1 else max(1, int(resources.get("CPU", 1)))
        self.resources: dict[str, Any] = {"num_cpus": 1, "num_gpus": 1 if gpus >= 1 else 0}
        if self.env:
            self.resources["runtime_env"] = self.env
        return self

    def __exit__(self, *exc) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self.owned:
            self.ray.shutdown()

    def workers(self, n: int) -> list:
        """At least min(n, slots) live `Worker` actors (created on first need, kept for the job)."""
        from vital.jobs.work import Worker

        cls = self.ray.remote(Worker).options(max_restarts=self.retries, max_task_retries=self.retries,
                                              **self.resources)
        while len(self.actors) < min(max(1, n), self.slots):
            self.actors.append(cls.remote())
        return list(self.actors)

    def suggest_batch_size(self, job, probe) -> tuple[int, dict]:
        actor = self.workers(1)[0]
        return self.ray.get(actor.suggest_batch_size.remote(job, probe))

    def run(self, job, todo: Sequence[tuple[int, list]], done: Callable, failed: Callable) -> None:
        self.map("run_batch", [(batch, (job, batch, index)) for index, batch in todo], done, failed)

    def map(self, method: str, items: Sequence[tuple[Any, tuple]], done: Callable, failed: Callable) -> None:
        """Call `Worker.method(*args)` for each (item, args) on an idle actor; hand each value to `done` as it
        arrives, or the item and the reason to `failed`. On Ctrl-C the actors are killed when the pool closes."""
        ray, queue = self.ray, list(items)
        idle = self.workers(len(queue))
        pending: dict = {}
        while queue or pending:
            while queue and idle:
                actor = idle.pop()
                item, args = queue.pop(0)
                pending[getattr(actor, method).remote(*args)] = (item, actor)
            if not pending:  # every actor is gone
                for item, _ in queue:
                    failed(item, f"no Ray worker left after {self.retries} restarts")
                return
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            item, actor = pending.pop(ref)
            try:
                value = ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # the batch raised: the actor is fine
                failed(item, f"{type(e.cause).__name__}: {e.cause}")
                idle.append(actor)
            except ray.exceptions.RayError as e:  # the actor died more often than `retries` allows
                failed(item, f"{type(e).__name__} after {self.retries} retries: {e}")
            else:
                done(value)
                idle.append(actor)
