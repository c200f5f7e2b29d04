"""Batch jobs: the plan, the layout, resuming after a kill, failures, the command line and sharded mining."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import FACTORY, TESTS, class_job, noise_folder, parse_batch_args, pixels, tiny_sequential

import vital
from vital.errors import VitalError
from vital.jobs import Job, MineJob, ModelSpec, References, plan, run_job, run_mining
from vital.jobs.work import batch_size_for
from vital.outputs.io import to_uint8
from vital.references.images import from_folder
from vital.references.mining import MiningStore, mine
from vital.references.mining_merge import merge_stores, shard_bounds


@pytest.fixture
def refs_dir(tmp_path):
    return noise_folder(tmp_path / "refs", 6)


def test_plan_groups_kinds_and_layers_then_cuts_batches():
    c, ch = vital.Class, vital.Channel
    targets = [c(1), ch("a", 0), c(2), ch("b", 5), ch("a", 1), c(3), ch("a", 2)]
    assert plan(targets, 2) == [[c(1), c(2)], [c(3)], [ch("a", 0), ch("a", 1)], [ch("a", 2)], [ch("b", 5)]]
    assert plan(targets, 10) == [[c(1), c(2), c(3)], [ch("a", 0), ch("a", 1), ch("a", 2)], [ch("b", 5)]]


def test_batch_size_rule():
    gib = 2**30
    assert batch_size_for(10 * gib, 2 * gib, gib // 2) == int((0.85 * 10 - 2) * 2)  # 13
    assert batch_size_for(gib, 2 * gib, gib) == 1  # never below one
    assert batch_size_for(100 * gib, 0, 1, cap=64) == 64


def test_job_results_match_a_direct_batched_run(tmp_path, refs_dir):
    job = class_job(refs_dir)
    summary = run_job(job, tmp_path / "out", progress=False)
    assert (summary["done"], summary["skipped"], summary["failed"], summary["batches_run"]) == (5, 0, 0, 3)
    out = tmp_path / "out"
    manifest = json.loads((out / "job.json").read_text())
    assert manifest["batch_size"] == 2 and manifest["job"]["targets"] == [f"class{k}" for k in range(5)]
    assert json.loads((out / "summary.json").read_text())["done"] == 5
    # batch 1 holds classes 2 and 3: rerun it directly through the public API
    direct = vital.visualize(tiny_sequential(), [vital.Class(2), vital.Class(3)], from_folder(refs_dir, n=6, seed=3),
                             steps=3, seed=3, progress=False)
    got = pixels(out)
    assert set(got) == {f"class{k:04d}" for k in range(5)}
    assert np.array_equal(got["class0003"], to_uint8(direct.images[1]))
    record = json.loads((out / "class0003" / "record.json").read_text())
    assert record["targets"][0]["index"] == 3 and record["batch"]["position"] == 1
    assert record["batch"]["targets"] == ["class2", "class3"]
    assert record["final_loss"] == pytest.approx([direct.record["final_loss"][1]])


def test_rerun_skips_complete_redoes_partial_and_refuses_another_job(tmp_path, refs_dir):
    out = tmp_path / "out"
    job = class_job(refs_dir)
    run_job(job, out, progress=False)
    first = pixels(out)
    (out / "class0004" / "class0004.png").unlink()  # damaged by hand: redone
    (out / ".tmp-class0001-1-dead").mkdir()  # what a killed writer leaves
    summary = run_job(job, out, progress=False)
    assert (summary["done"], summary["skipped"], summary["batches_run"]) == (1, 4, 1)
    assert not list(out.glob(".tmp-*"))
    again = pixels(out)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    with pytest.raises(VitalError, match="another job"):
        run_job(class_job(refs_dir, steps=4), out, progress=False)
    with pytest.raises(VitalError, match="batch size 2"):
        run_job(class_job(refs_dir, batch_size=3), out, progress=False)


def test_failed_batch_is_reported_and_the_rest_is_done(tmp_path, refs_dir):
    """Class 2's folder holds only an unreadable file: its batch (classes 2, 3) fails, the others are written, and a
    rerun once the folder is fixed redoes only the failed batch."""
    root = tmp_path / "train"
    for k in range(5):
        noise_folder(root / f"c{k}", 3, seed=k)
    for p in (root / "c2").iterdir():
        p.unlink()
    (root / "c2" / "broken.jpg").write_bytes(b"not an image")
    job = class_job(refs_dir, classes=range(5), references=References("class-folder", str(root), n=3))
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        summary = run_job(job, out, progress=False)
    assert (summary["done"], summary["failed"], summary["batches_run"]) == (3, 2, 3)
    assert [f["target"] for f in summary["failures"]] == ["class2", "class3"]
    assert "could be read" in summary["failures"][0]["reason"]
    assert set(pixels(out)) == {"class0000", "class0001", "class0004"}
    direct = vital.visualize(tiny_sequential(), [vital.Class(4)], from_folder(root / "c4", n=3, seed=3), steps=3,
                             seed=3, progress=False)  # the last batch ran after the failed one, and ran right
    assert np.array_equal(pixels(out)["class0004"], to_uint8(direct.images[0]))
    noise_folder(root / "c2", 3, seed=2)
    (root / "c2" / "broken.jpg").unlink()
    again = run_job(job, out, progress=False)
    assert (again["done"], again["skipped"], again["failed"], again["batches_run"]) == (2, 3, 0, 1)
    assert set(pixels(out)) == {f"class{k:04d}" for k in range(5)}


def test_a_worker_builds_the_model_once_and_releases_it(tmp_path, refs_dir):
    """The model cache is the job's: one build for all batches, the speed options undone when the worker closes."""
    from vital.jobs.work import Worker
    from vital.run.speed import SpeedOptions

    job = class_job(refs_dir, speed=SpeedOptions(channels_last=True))
    with Worker() as worker:
        first = worker.run_batch(job, [vital.Class(0), vital.Class(1)], 0)
        model = worker.models.model
        worker.run_batch(job, [vital.Class(2)], 1)
        assert worker.models.builds == 1 and worker.models.model is model
        assert model.module[0].weight.is_contiguous(memory_format=torch.channels_last)
        assert json.loads(first[0].files["record.json"])["batch"]["speed"]["options"]["channels_last"]
    assert worker.models.model is None
    assert model.module[0].weight.is_contiguous() and not model.module._forward_pre_hooks
    assert Worker().models.model is None  # nothing shared between workers


def test_interrupt_keeps_finished_batches_and_writes_the_summary(tmp_path, refs_dir, monkeypatch):
    from vital.jobs.work import Worker

    calls = []

    def interrupted_second_batch(self, job, batch, index):
        calls.append(index)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, job, batch, index)

    real = Worker.run_batch
    monkeypatch.setattr(Worker, "run_batch", interrupted_second_batch)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_job(class_job(refs_dir), out, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and summary["done"] == 2
    assert set(pixels(out)) == {"class0000", "class0001"}


def _script(job_args: str) -> str:
    return (f"import sys; from vital.cli.batch import run as cmd_batch, add as add_batch_parser; import argparse\n"
            f"p = argparse.ArgumentParser(); add_batch_parser(p.add_subparsers())\n"
            f"code = cmd_batch(p.parse_args({job_args!r}.split()))\n"
            "assert 'ray' not in sys.modules, 'ray imported without --ray'\n"
            "sys.exit(code)\n")


def test_killed_run_resumes_to_the_same_results(tmp_path, refs_dir):
    """A run killed (SIGKILL) after its first result, then rerun, equals an uninterrupted run. All runs use one
    thread, so that every process computes bit-identical images."""
    args = (f"batch --factory {FACTORY} --classes 0-7 --refs {refs_dir} --refs-flat -n 6 --steps 15 --seed 3 "
            "--batch-size 2 --quiet --out ")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    whole = subprocess.run([sys.executable, "-c", _script(args + str(tmp_path / "whole"))], env=env,
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    assert "8 done, 0 skipped" in whole.stdout
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _script(args + str(killed))], env=env)
    try:
        deadline = time.monotonic() + 240
        while not (killed / "class0000").is_dir() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    partial = set(pixels(killed))
    assert 0 < len(partial) < 8  # killed in the middle
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_job(Job(model=ModelSpec(factory=FACTORY), targets=tuple(vital.Class(k) for k in range(8)),
                              steps=15, seed=3, references=References("folder", str(refs_dir), n=6)), killed,
                          progress=False)
    finally:
        torch.set_num_threads(threads)
    assert summary["skipped"] == len(partial) and summary["done"] == 8 - len(partial)
    a, b = pixels(tmp_path / "whole"), pixels(killed)
    assert set(a) == set(b) == {f"class{k:04d}" for k in range(8)}
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not list(killed.glob(".tmp-*")) and not list(killed.glob(".old-*"))


def test_job_file_and_flags(tmp_path, refs_dir, capsys):
    from vital.cli.batch import job_dict
    from vital.cli.batch import run as cmd_batch
    from vital.jobs.spec import job_from_dict

    toml = tmp_path / "job.toml"
    toml.write_text(f'factory = "{FACTORY}"\nsteps = 2\nseed = 1\n[targets]\nlayer = "2"\nchannels = "0-2"\n'
                    f'[references]\nsource = "folder"\npath = "{refs_dir}"\nn = 4\n[options]\nrelevance = "none"\n'
                    '[speed]\nchannels_last = true\n')
    with pytest.raises(VitalError, match="names a model factory.*--allow-factory"):
        job_dict(parse_batch_args(["batch", str(toml), "--out", "x"]))
    job = job_from_dict(job_dict(parse_batch_args(["batch", str(toml), "--allow-factory", "--steps", "3", "--out",
                                                   "x"])))
    assert job.steps == 3 and job.seed == 1 and job.speed.channels_last and job.options == {"relevance": "none"}
    assert job.targets == (vital.Channel("2", 0), vital.Channel("2", 1), vital.Channel("2", 2))
    assert job.references == References("folder", str(refs_dir), 4)
    assert cmd_batch(parse_batch_args(["batch", str(toml), "--allow-factory", "--batch-size", "2", "-q", "--out",
                                       str(tmp_path / "o")])) == 0
    assert "3 done, 0 skipped (already complete), 0 failed of 3 targets" in capsys.readouterr().out
    toml.write_text(f'factory = "{FACTORY}"\nstep = 2\n')
    with pytest.raises(VitalError, match="unknown key 'step'.*steps"):
        job_from_dict(job_dict(parse_batch_args(["batch", str(toml), "--allow-factory", "--out", "x"])))
    with pytest.raises(VitalError, match="no targets"):
        job_from_dict(job_dict(parse_batch_args(["batch", "--model", "resnet18", "--out", "x"])))
    with pytest.raises(VitalError, match="without channels"):
        job_from_dict(job_dict(parse_batch_args(["batch", "--model", "resnet18", "--layer", "layer4", "--out", "x"])))
    mine_job = job_from_dict(job_dict(parse_batch_args(["batch", "-m", "resnet18", "--weights", "none", "--mine", "layer1,layer2",
                                              "--images", "imgs", "--shards", "4", "--out", "x"])))
    assert mine_job == MineJob(ModelSpec("resnet18", None), ("layer1", "layer2"), "imgs", shards=4)


def test_shard_bounds():
    assert shard_bounds(11, 3, 2) == [(0, 4), (4, 8), (8, 11)]
    assert shard_bounds(5, 4, 2) == [(0, 2), (2, 4), (4, 5)]  # never more shards than batches
    assert shard_bounds(3, 1, 8) == [(0, 3)]


def _same_store(a: MiningStore, b: MiningStore) -> None:
    assert a.files == b.files
    assert a.index["skipped"] == b.index["skipped"] == ["img99_broken.jpg"]
    drop = ("created", "updated")
    assert {k: v for k, v in a.index.items() if k not in drop} == {k: v for k, v in b.index.items() if k not in drop}
    for layer in a.layers:
        for name, t in a.tensors[layer].items():
            assert torch.equal(t, b.tensors[layer][name]), (layer, name)


def test_sharded_mining_merges_into_the_single_pass_store(tmp_path):
    images = noise_folder(tmp_path / "images", 10, seed=1, broken=True)
    model = tiny_sequential()
    with pytest.warns(UserWarning, match="unreadable"):
        single = mine(model, ["2", "4"], images, k=3, n_images=4, batch_size=2, out=tmp_path / "single",
                      progress=False)
    job = MineJob(ModelSpec(factory=FACTORY), ("2", "4"), str(images), k=3, n_images=4, batch_size=2, shards=3)
    with pytest.warns(UserWarning, match="unreadable"):
        merged, summary = run_mining(job, tmp_path / "merged", progress=False)
    assert (summary["shards"], summary["shards_run"], summary["failed"]) == (3, 3, 0)
    _same_store(single, merged)
    _same_store(single, MiningStore.load(tmp_path / "merged"))
    assert merged.references("4", 5, "patches", 2).images[0][0] == single.references("4", 5, "patches", 2).images[0][0]
    _, again = run_mining(job, tmp_path / "merged", progress=False)  # finished shards are not mined again
    assert again["shards_run"] == 0
    # the merge alone, of two shards mined by hand
    shards = []
    for i, (a, b) in enumerate(shard_bounds(11, 2, 2)):
        part = tmp_path / f"part{i}"
        part.mkdir()
        for name in sorted(p.name for p in images.iterdir())[a:b]:
            (part / name).symlink_to(images / name)
        with pytest.warns(UserWarning) if i == 1 else contextlib.nullcontext():
            mine(model, ["2", "4"], part, k=3, n_images=4, batch_size=2, out=tmp_path / f"store{i}", progress=False)
        shards.append(tmp_path / f"store{i}")
    _same_store(single, merge_stores(shards, tmp_path / "by_hand", images))



def test_random_named_model_is_the_same_in_every_worker():
    """A worker rebuilds `--model resnet18 --weights none` from a fixed seed, leaving the caller's RNG alone."""
    torch.manual_seed(5)
    expected_next = torch.rand(1)
    torch.manual_seed(5)
    a, b = ModelSpec("resnet18", None).load("cpu"), ModelSpec("resnet18", None).load("cpu")
    assert torch.equal(torch.rand(1), expected_next)
    assert all(torch.equal(x, y) for x, y in zip(a.module.state_dict().values(), b.module.state_dict().values(),
                                                 strict=True))


def test_a_method_that_couples_the_batch_runs_one_target_at_a_time(tmp_path, refs_dir):
    import dataclasses

    job = dataclasses.replace(class_job(refs_dir), method="deepinversion", batch_size=None)
    summary = run_job(job, tmp_path / "out", progress=False)
    manifest = json.loads((tmp_path / "out" / "job.json").read_text())
    assert manifest["batch_size"] == 1 and "couples" in manifest["batch_rule"]["rule"]
    assert summary["batches_run"] == len(job.targets)  # (each fails here: the tiny net has no BatchNorm)
    with pytest.raises(VitalError, match="couples the samples of a batch.*drop --batch-size 2"):
        run_job(dataclasses.replace(job, batch_size=2), tmp_path / "other", progress=False)
