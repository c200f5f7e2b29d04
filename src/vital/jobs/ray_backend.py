"""Batches as Ray tasks: one task per batch, a GPU asked for wherever the cluster has one, the model rebuilt in
each worker (by name + weights or an importable factory; cached per worker process) and the results returned to
the driver, which alone writes them. A task whose worker dies is retried by Ray (`max_retries`); only the attempt
that returns delivers files, so nothing is lost or written twice. Ray is imported only here.
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
        gpus = self.ray.cluster_resources().get("GPU", 0)
        self.resources: dict[str, Any] = {"num_cpus": 1, "num_gpus": 1 if gpus >= 1 else 0}
        if self.env:
            self.resources["runtime_env"] = self.env
        return self

    def __exit__(self, *exc) -> None:
        if self.owned:
            self.ray.shutdown()

    def task(self, fn: Callable, **options):
        return self.ray.remote(fn).options(max_retries=self.retries, retry_exceptions=False, **self.resources,
                                           **options)

    def suggest_batch_size(self, job, probe) -> tuple[int, dict]:
        from vital.jobs.work import suggest_batch_size

        return self.ray.get(self.task(suggest_batch_size).remote(job, probe))

    def run(self, job, todo: Sequence[tuple[int, list]], done: Callable, failed: Callable) -> None:
        from vital.jobs.work import run_batch

        remote = self.task(run_batch)
        pending = {remote.remote(job, batch, index): batch for index, batch in todo}
        self.wait_all(pending, done, failed)

    def wait_all(self, pending: dict, done: Callable, failed: Callable) -> None:
        """Hand each task's value to `done` as it finishes (or its error to `failed`); cancel the rest on Ctrl-C."""
        ray = self.ray
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    item = pending.pop(ref)
                    try:
                        value = ray.get(ref)
                    except ray.exceptions.RayTaskError as e:
                        failed(item, f"{type(e.cause).__name__}: {e.cause}")
                    except ray.exceptions.RayError as e:  # worker or node lost more often than `retries` allows
                        failed(item, f"{type(e).__name__} after {self.retries} retries: {e}")
                    else:
                        done(value)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
