"""The same jobs on a local Ray cluster (loopback, 2 workers): same results as in-process, a killed worker's task
retried without loss or duplicates, and sharded mining merged into the single-pass store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'vital[ray]')")

from conftest import FACTORY, class_job, noise_folder, parse_batch_args, pixels, tiny_sequential  # noqa: E402

import vital  # noqa: E402
from vital.cli.batch import run as cmd_batch  # noqa: E402
from vital.jobs import Job, MineJob, ModelSpec, References, run_job, run_mining  # noqa: E402
from vital.references.mining import mine  # noqa: E402

CRASH_DIR = "VITAL_TEST_CRASH_DIR"


def crash_once():
    """The tiny model, except that the first worker to build it dies on the spot (os._exit, as a killed process)."""
    try:
        fd = os.open(Path(os.environ[CRASH_DIR]) / "crashed", os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return tiny_sequential()
    os.close(fd)
    os._exit(1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    os.environ[CRASH_DIR] = str(tmp_path_factory.mktemp("crash"))  # inherited by the workers
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield Path(os.environ[CRASH_DIR])
    ray.shutdown()


def _close(a: dict, b: dict) -> bool:
    """Same targets, pixels within one uint8 level (a Ray worker computes with one thread, so sums are ordered
    differently than in this process)."""
    return set(a) == set(b) and all(np.abs(a[k].astype(int) - b[k].astype(int)).max() <= 1 for k in a)


def test_ray_run_equals_in_process_run(cluster, tmp_path, capsys):
    refs = noise_folder(tmp_path / "refs", 6)
    local = run_job(class_job(refs, classes=range(6)), tmp_path / "local", progress=False)
    assert local["done"] == 6
    argv = ["batch", "--factory", FACTORY, "--classes", "0-5", "--refs", str(refs), "--refs-flat", "-n", "6",
            "--steps", "3", "--seed", "3", "--batch-size", "2", "-q", "--ray", "auto", "--out", str(tmp_path / "ray")]
    assert cmd_batch(parse_batch_args(argv)) == 0
    assert "6 done, 0 skipped (already complete), 0 failed of 6 targets" in capsys.readouterr().out
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["backend"] == "ray auto" and summary["batches_run"] == 3
    assert _close(pixels(tmp_path / "local"), pixels(tmp_path / "ray"))


def test_killed_worker_is_retried_without_loss_or_duplicates(cluster, tmp_path):
    refs = noise_folder(tmp_path / "refs", 6)
    crashing = Job(model=ModelSpec(factory="test_ray:crash_once"), targets=tuple(vital.Class(k) for k in range(4)),
                   steps=3, seed=3, references=References("folder", str(refs), n=6), batch_size=2)
    summary = run_job(crashing, tmp_path / "ray", ray="auto", retries=2, progress=False)
    assert (cluster / "crashed").exists()  # a worker did die during a task
    assert (summary["done"], summary["failed"], summary["skipped"]) == (4, 0, 0)
    folders = sorted(p.name for p in (tmp_path / "ray").iterdir() if p.is_dir())
    assert folders == [f"class{k:04d}" for k in range(4)]  # each once, no temporary leftovers
    run_job(class_job(refs, classes=range(4)), tmp_path / "local", progress=False)
    assert _close(pixels(tmp_path / "local"), pixels(tmp_path / "ray"))


def test_sharded_mining_on_ray_equals_single_pass(cluster, tmp_path):
    images = noise_folder(tmp_path / "images", 8, seed=2)
    single = mine(tiny_sequential(), ["4"], images, k=3, batch_size=2, progress=False)
    job = MineJob(ModelSpec(factory=FACTORY), ("4",), str(images), k=3, batch_size=2, shards=2)
    merged, summary = run_mining(job, tmp_path / "store", ray="auto", progress=False)
    assert summary["shards_run"] == 2 and merged.files == single.files
    for name, t in single.tensors["4"].items():
        if name.endswith("index") or name.endswith("boxes"):
            assert (t == merged.tensors["4"][name]).all(), name
        else:
            assert np.allclose(t.numpy(), merged.tensors["4"][name].numpy(), rtol=1e-5, atol=1e-6), name
