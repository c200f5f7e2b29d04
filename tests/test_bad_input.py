"""Bad inputs and faults, table-driven: every case ends in a one-line error that names the fix (CLI: exit 2, one
`error:` line, no traceback; API: a VitalError), or in correct behaviour; nothing written before is lost.

CLI cases run in one subprocess (a fresh interpreter, as a user's shell would start), each through `vital.cli.main`
with its stderr captured; file permissions, which root ignores, are simulated in-process."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vital
import vital.cli
from vital.errors import VitalError
from vital.metrics.evaluation import Visual, evaluate
from vital.models import load_model
from vital.outputs.claim import RunFolder
from vital.references.images import from_class_folder, from_folder
from vital.references.mining import MiningStore, mine
from vital.targets import Channel, Class, parse_range

ROOT = Path(__file__).resolve().parents[1]


def _png(path: Path, seed: int, size: int = 48) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _bomb(path: Path, side: int = 20000) -> Path:
    """A PNG that declares side x side pixels (far over PIL's decompression-bomb limit) in a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Folders and files the cases use: good photos, a decompression bomb, a finished run, a mined store, damaged
    copies of records, stores and job files, weights files of the wrong kind."""
    w = tmp_path_factory.mktemp("world")
    photos = w / "photos"
    photos.mkdir()
    for i in range(3):
        _png(photos / f"p{i}.png", i)
    classes = w / "classes"
    for k in range(2):
        (classes / f"c{k}").mkdir(parents=True)
        _png(classes / f"c{k}" / "a.png", 10 + k)
    _bomb(w / "bomb.png")
    run = w / "run"
    assert vital.cli.main(["class", "--model", "efficientnet_lite0", "--class", "1", "--refs", "none",
                           "--method", "fourier", "--steps", "1", "--out", str(run), "-q"]) == 0
    record = json.loads((run / "record.json").read_text())
    records = w / "records"
    records.mkdir()
    (records / "truncated.json").write_text((run / "record.json").read_text()[:200])
    (records / "list.json").write_text("[1, 2, 3]")
    (records / "missing.json").write_text(json.dumps({k: v for k, v in record.items() if k != "model"}))
    (records / "types.json").write_text(json.dumps({**record, "targets": [{"kind": "class", "index": "one"}]}))
    (records / "nonutf8.json").write_bytes(b'{"method": "\xff\xfe"}')
    model = load_model("efficientnet_lite0")
    store = w / "store"
    mine(model, ["_blocks.2"], photos, k=2, out=store, progress=False)
    other = w / "other_store"
    mine(model, ["_blocks.4"], photos, k=2, out=other, progress=False)
    weights = w / "weights"
    weights.mkdir()
    torch.save({"conv.weight": torch.zeros(2, 2)}, weights / "wrong_shape.pth")
    torch.save({"_conv_stem.weight": torch.zeros(1)}, weights / "wrong_tensor.pth")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(w / "pwned"),))

    torch.save(Evil(), weights / "evil.pth")  # a pickle that would run a command if unpickled with weights_only=False
    jobs = w / "jobs"
    jobs.mkdir()
    (jobs / "factory.toml").write_text('factory = "conftest:tiny_sequential"\n[targets]\nclasses = "0"\n')
    (jobs / "types.toml").write_text('model = "efficientnet_lite0"\nsteps = "ten"\n[targets]\nclasses = "0"\n')
    (jobs / "options.toml").write_text('model = "efficientnet_lite0"\n[targets]\nclasses = "0"\n[options]\nlr = -1\n')
    (jobs / "indices.toml").write_text('model = "efficientnet_lite0"\n[targets]\nclasses = [0.5]\n')
    (jobs / "nonutf8.toml").write_bytes(b'model = "\xff"\n')
    (jobs / "folder.toml").mkdir()
    secret = w / "secret.txt"
    secret.write_text("do not copy me")
    escaped = w / "escaped_run"
    escaped.mkdir()
    (escaped / "record.json").write_text(json.dumps({**record, "outputs": [{**record["outputs"][0],
                                                                            "image": str(secret)}]}))
    return w


# ---- the CLI ------------------------------------------------------------------------------------------------------

# (name, argv with {w} for the world folder, regex the one error line must match); all must exit 2
CLI_ERRORS = [
    ("steps 0", "class -m efficientnet_lite0 -c 1 --refs offline --steps 0 -o {w}/o1", "steps must be at least 1"),
    ("lr huge", "class -m efficientnet_lite0 -c 1 --refs offline --lr 1e30 -o {w}/o1", "lr must be at most 10"),
    ("lr inf", "class -m efficientnet_lite0 -c 1 --refs offline --lr inf -o {w}/o1", "lr must be a finite number"),
    ("lr nan", "class -m efficientnet_lite0 -c 1 --refs offline --lr nan -o {w}/o1", "lr must be a finite number"),
    ("lr negative", "class -m efficientnet_lite0 -c 1 --refs offline --lr -1 -o {w}/o1", "lr must be above 0"),
    ("n negative", "class -m efficientnet_lite0 -c 1 --refs offline -n -3 -o {w}/o1", r"\(-n\) must be at least 1"),
    ("warmup negative", "class -m efficientnet_lite0 -c 1 --refs offline --warmup -1 -o {w}/o1",
     "warmup must be at least 0"),
    ("jitter negative", "class -m efficientnet_lite0 -c 1 --refs offline --jitter -2 -o {w}/o1",
     "jitter must be at least 0"),
    ("huge range", "class -m efficientnet_lite0 -c 0-99999999 --refs offline -o {w}/o1", "more than 100000 indices"),
    ("reversed range", "class -m efficientnet_lite0 -c 5-2 --refs offline -o {w}/o1", "runs backwards; write 2-5"),
    ("class out of range", "class -m efficientnet_lite0 -c 1000 --refs none --method fourier -o {w}/o1",
     "class 1000 is out of range"),
    ("ref kind on a folder", "neuron -m efficientnet_lite0 --channel _blocks.2:0 --refs {w}/photos --ref-kind "
     "patches -o {w}/o1", "--ref-kind patches picks a mining store"),
    ("empty out", "class -m efficientnet_lite0 -c 1 --refs offline -o ''", "empty name"),
    ("another run's folder", "class -m efficientnet_lite0 -c 1 --refs offline -o {w}/run", "holds another run"),
    ("foreign folder", "class -m efficientnet_lite0 -c 1 --refs offline -o {w}/photos", "not empty and holds no"),
    ("out is a file", "class -m efficientnet_lite0 -c 1 --refs offline -o {w}/secret.txt", "is a file"),
    ("device cuda", "class -m efficientnet_lite0 -c 1 --refs offline --device cuda -o {w}/o1",
     "CUDA is not available"),
    ("device nonsense", "class -m efficientnet_lite0 -c 1 --refs offline --device nonsense -o {w}/o1",
     "unknown device 'nonsense'"),
    ("device mps", "mine efficientnet_lite0 --layers _blocks.2 --images {w}/photos --device mps -o {w}/o2",
     "MPS is not available"),
    ("device cuda:7 rerun", "rerun {w}/run --device cuda:7 -o {w}/o3", "CUDA is not available"),
    ("device eval", "eval {w}/run --device nonsense -o {w}/o4", "unknown device"),
    ("weights missing", "class -m efficientnet_lite0 --weights {w}/nope.pth -c 1 --refs offline -o {w}/o1",
     "does not exist"),
    ("weights folder", "class -m resnet18 --weights {w}/weights -c 1 --refs offline -o {w}/o1", "is a folder"),
    ("weights wrong shape", "class -m efficientnet_lite0 --weights {w}/weights/wrong_shape.pth -c 1 --refs offline "
     "-o {w}/o1", "do not fit efficientnet_lite0"),
    ("weights with code", "class -m efficientnet_lite0 --weights {w}/weights/evil.pth -c 1 --refs offline -o {w}/o1",
     "cannot read weights file .* as a PyTorch state dict"),
    ("timm unknown", "class -m timm:no_such_net -c 1 --refs offline -o {w}/o1", "unknown timm model"),
    ("unknown model", "class -m no_such_net -c 1 --refs offline -o {w}/o1", "unknown model"),
    ("refs folder missing", "class -m efficientnet_lite0 -c 1 --refs {w}/nowhere --refs-flat -o {w}/o1",
     "does not exist"),
    ("rerun truncated", "rerun {w}/records/truncated.json -o {w}/o3", "cannot read the run record"),
    ("rerun list", "rerun {w}/records/list.json -o {w}/o3", "not a run record"),
    ("rerun missing keys", "rerun {w}/records/missing.json -o {w}/o3", "lacks model"),
    ("rerun wrong types", "rerun {w}/records/types.json -o {w}/o3", "damaged"),
    ("rerun not utf-8", "rerun {w}/records/nonutf8.json -o {w}/o3", "cannot read the run record"),
    ("report escaping path", "report {w}/escaped_run -o {w}/o5", "outside its run folder"),
    ("report unwritable", "report {w}/run -o {w}/secret.txt/x", "cannot write to output folder"),
    ("batch factory", "batch {w}/jobs/factory.toml -o {w}/o6", "--allow-factory"),
    ("batch wrong type", "batch {w}/jobs/types.toml -o {w}/o7", "steps must be a whole number"),
    ("batch bad option", "batch {w}/jobs/options.toml -o {w}/o7", "lr must be above 0"),
    ("batch bad indices", "batch {w}/jobs/indices.toml -o {w}/o7", "indices must be"),
    ("batch not utf-8", "batch {w}/jobs/nonutf8.toml -o {w}/o7", "not UTF-8"),
    ("batch folder", "batch {w}/jobs/folder.toml -o {w}/o7", "is a folder"),
    ("demo steps 0", "demo --steps 0 -o {w}/o8", "steps must be at least 1"),
]

DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys, traceback
    from vital.cli import main
    results = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(argv)
            except SystemExit as e:
                rc = e.code
            except BaseException:
                rc = "traceback"
                traceback.print_exc(file=err)
        results.append({"rc": rc, "stderr": err.getvalue()})
    print(json.dumps(results))
""")


def _run_cli(cases: list[list[str]], env_extra: dict | None = None) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cases)], capture_output=True, text=True,
                          env=env, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _argv(template: str, w: Path) -> list[str]:
    import shlex

    return shlex.split(template.format(w=w))


def test_every_cli_case_is_one_line_with_the_fix(world):
    results = _run_cli([_argv(t, world) for _, t, _ in CLI_ERRORS])
    failures = []
    for (name, _, pattern), res in zip(CLI_ERRORS, results, strict=True):
        errors = [ln for ln in res["stderr"].splitlines() if ln.startswith("error:")]
        import re

        ok = (res["rc"] == 2 and "Traceback" not in res["stderr"] and len(errors) == 1
              and re.search(pattern, errors[0]) and "weights_only" not in errors[0] and "\x1b[" not in errors[0])
        if not ok:
            failures.append(f"{name}: rc={res['rc']} stderr={res['stderr'][-600:]!r}")
    assert not failures, "\n".join(failures)
    # nothing was written by the refused runs, and no code ran from the pickle
    assert not (world / "pwned").exists()
    assert json.loads((world / "run" / "record.json").read_text())["targets"][0]["index"] == 1
    assert not (world / "o5").exists() or not any((world / "o5").rglob("*secret*"))
    assert not (world / "o7" / "job.json").exists()


def test_duplicates_are_run_once_with_a_note(world):
    out = world / "dup"
    res = _run_cli([["class", "-m", "efficientnet_lite0", "-c", "1,1", "--refs", "none", "--method", "fourier",
                     "--steps", "1", "-o", str(out), "-q"]])[0]
    assert res["rc"] == 0 and "given more than once: visualised once" in res["stderr"]
    assert [p.name for p in out.glob("class*.png") if "transparency" not in p.name] == ["class0001.png"]


def test_eval_of_one_image_in_a_read_only_run(world):
    """t-SNE needs 3 images: with fewer the table stands and a note says why; the run folder is only read."""
    before = (world / "run" / "record.json").read_bytes()
    res = _run_cli([["eval", str(world / "run"), "--model", "efficientnet_lite0", "--judges", "efficientnet_lite1",
                     "-o", str(world / "eval"), "-q"]])[0]
    assert res["rc"] == 0, res["stderr"]
    assert (world / "run" / "record.json").read_bytes() == before
    assert "no t-SNE embedding: it needs at least 3 images, got 1" in (world / "eval" / "table.md").read_text()
    assert (world / "eval" / "report.html").is_file() and (world / "eval" / "metrics.json").is_file()


def test_overwrite_replaces_a_run_as_a_whole(world):
    out = world / "twice"
    argv = ["class", "-m", "efficientnet_lite0", "-c", "{c}", "--refs", "none", "--method", "fourier", "--steps",
            "1", "-o", str(out), "-q"]
    first, second = _run_cli([[a.format(c=2) for a in argv], [a.format(c=3) for a in argv] + ["--overwrite"]])
    assert first["rc"] == 0 and second["rc"] == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["class0003.png", "class0003_transparency.png", "contact_sheet.png", "record.json"]


def test_offline_promise_no_connection_is_ever_tried(tmp_path):
    """timm and CLIP loaders, with every socket connection recorded and refused."""
    code = textwrap.dedent(f"""
        import socket, sys
        tries = []
        def refuse(self, address):
            tries.append(address)
            raise OSError("network disabled in this test")
        socket.socket.connect = refuse
        socket.create_connection = lambda *a, **k: refuse(None, a[0] if a else None)
        from vital.errors import VitalError
        from vital.models import load_model
        from vital.metrics.clip import _load
        for call in (lambda: load_model("timm:resnet18"), lambda: load_model("resnet18"),
                     lambda: _load("ViT-B-32", "openai", "cpu"), lambda: _load("ViT-B-32", "{tmp_path}/x.pt", "cpu")):
            try:
                call()
                print("loaded")
            except VitalError as e:
                print("error:", str(e).splitlines()[0][:80])
        print("tries", len(tries))
    """)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert lines[-1] == "tries 0", proc.stdout
    assert sum(ln.startswith("error:") for ln in lines) == 4, proc.stdout


# ---- the Python API -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0")


def test_an_unreadable_reference_is_skipped_and_the_run_kept(world, lite0, monkeypatch, tmp_path):
    """One file that cannot be opened (simulated: root ignores permissions) and a decompression bomb among good
    photos: the run finishes, the record lists what was used and what was skipped."""
    folder = tmp_path / "refs"
    folder.mkdir()
    for i in range(3):
        _png(folder / f"ok{i}.png", i)
    _bomb(folder / "bomb.png")
    locked = _png(folder / "locked.png", 9)
    real_open = open

    def guarded(path, *a, **k):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", guarded)
    refs = from_folder(folder, n=None)
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        res = vital.visualize(lite0, Class(1), refs, steps=1, progress=False)
    used = [Path(f["file"]).name for f in res.record["references"][0]["files"]]
    assert used == ["ok0.png", "ok1.png", "ok2.png"]
    assert sorted(Path(p).name for p in res.record["references"][0]["skipped"]) == ["bomb.png", "locked.png"]
    res.save(tmp_path / "out")
    assert (tmp_path / "out" / "record.json").is_file()


def test_an_unreadable_folder_is_one_error(monkeypatch, tmp_path):
    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "rglob", denied)
    with pytest.raises(VitalError, match="cannot read the folder .* check its permissions"):
        from_folder(tmp_path)


@pytest.mark.parametrize("call, pattern", [
    (lambda m, w: from_class_folder(w / "classes", cls=1.7), "class must be an index or a folder name"),
    (lambda m, w: vital.visualize(m, Class(1), None, method="fourier", steps=1, relevance="bogus"), "relevance"),
    (lambda m, w: vital.visualize(m, [Class(1), Class(1)], None, method="fourier", steps=1), "more than once"),
    (lambda m, w: vital.visualize(m, Class(1), None, method="fourier", steps=0), "steps must be at least 1"),
    (lambda m, w: vital.visualize(m, Class(1), None, method="fourier", steps=2.5), "whole number"),
    (lambda m, w: vital.visualize(m, Class(1), None, method="fourier", steps=1, lr=float("nan")), "finite"),
    (lambda m, w: vital.visualize(m, Class(1), None, method="maco", steps=1, crops=0), "crops must be at least 1"),
    (lambda m, w: vital.visualize(m, Class(1), None, method="vital", steps=1, layer_weights=[1, float("inf")]),
     "layer_weights must be a finite number"),
    (lambda m, w: parse_range("3-1"), "runs backwards"),
    (lambda m, w: evaluate([Visual(torch.full((3, 8, 8), float("nan")), 1, "x")], m, classifiers=[], fid=False,
                           progress=False), "NaN or infinite"),
    (lambda m, w: load_model("efficientnet_lite0", weights=str(w / "weights" / "wrong_tensor.pth")), "do not fit"),
    (lambda m, w: load_model("efficientnet_lite0", device="cuda:3"), "CUDA is not available"),
])
def test_api_cases(world, lite0, call, pattern):
    with pytest.raises(VitalError, match=pattern):
        call(lite0, world)


def test_nan_images_are_not_mined(lite0, tmp_path):
    class Nan(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            x = torch.zeros(3, 32, 32)
            return x.fill_(float("nan")) if i != 1 else x.normal_()

    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        store = mine(lite0, ["_blocks.2"], Nan(), k=1, progress=False)
    assert torch.isfinite(store.tensors["_blocks.2"]["patch_scores"]).all()


@pytest.mark.parametrize("damage, pattern", [
    ("index", "cannot read the store's index"), ("state", "damaged or not a mining store's data"),
    ("files", "lacks files.json"), ("swap", "does not match"), ("random", "damaged or not a mining store's data"),
])
def test_damaged_stores_are_one_error(world, tmp_path, damage, pattern):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(world / "store", store)
    if damage == "index":
        (store / "index.json").write_text((store / "index.json").read_text()[:50])
    elif damage == "state":
        (store / "topk.pt").write_bytes((store / "topk.pt").read_bytes()[:100])
    elif damage == "random":
        (store / "topk.pt").write_bytes(os.urandom(2000))
    elif damage == "files":
        (store / "files.json").unlink()
    else:
        shutil.copy(world / "other_store" / "topk.pt", store / "topk.pt")
    with pytest.raises(VitalError, match=pattern):
        MiningStore.load(store)


def test_slugs_never_leave_the_output_folder():
    for layer in ["a/../../etc", "..", "x\0y", "/abs/path"]:
        slug = Channel(layer, 3).slug()
        assert "/" not in slug and "\0" not in slug and not slug.startswith(".")


def test_kill_during_save_keeps_the_previous_run(world, lite0, tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = vital.visualize(lite0, Class(2), None, method="fourier", steps=1, progress=False)
    first.save(out)
    before = sorted(p.name for p in out.iterdir())
    second = vital.visualize(lite0, Class(3), None, method="fourier", steps=1, progress=False)

    def dies(*a, **k):
        raise KeyboardInterrupt  # as a kill between the images and the record would

    import importlib

    monkeypatch.setattr(importlib.import_module("vital.outputs.record"), "write_json", dies)
    with pytest.raises(KeyboardInterrupt):
        second.save(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before
    assert not list(tmp_path.glob(".run.*")), list(tmp_path.iterdir())  # no leftover, no lock


def test_two_writers_and_a_stale_lock(tmp_path):
    out = tmp_path / "shared"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from vital.outputs.claim import RunFolder
        with RunFolder({str(out)!r}):
            print("held", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(VitalError, match=rf"another vital process \(pid {holder.pid}\) is writing"):
            with RunFolder(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    lock = tmp_path / ".shared.vital-lock"
    lock.write_text(f"{holder.pid} {socket.gethostname()}")  # the killed writer's lock: stale
    with RunFolder(out) as folder:
        assert folder.held
    assert not lock.exists()


def test_random_networks_are_reproducible():
    a, b = load_model("resnet18", weights=None), load_model("resnet18", weights=None)
    assert a.weights_id == "random (seed 0)"
    assert all(torch.equal(p, q) for p, q in zip(a.module.parameters(), b.module.parameters(), strict=True))


def test_report_links_are_url_encoded_and_names_need_not_be_utf8(world, lite0, tmp_path):
    from vital.pages.report import GalleryEntry, rows_from_entries, write_gallery

    odd = tmp_path / "odd"
    odd.mkdir()
    names = ["a#b.png", "c%d.png", "e?f.png", os.fsdecode(b"\xffname.png")]
    entries = [GalleryEntry(_png(odd / n, i), "m", f"t{i}") for i, n in enumerate(names)]
    page = write_gallery(tmp_path / "g", rows_from_entries(entries)).read_text(encoding="utf-8")
    for encoded in ("a%23b.png", "c%25d.png", "e%3Ff.png", "%FFname.png"):
        assert encoded in page
