"""What every output folder and input promises (the README's Guarantees): a foreign folder is never written, an own
output is replaced only with --overwrite, a symlinked --out keeps its link, nothing is left beside --out, a batch
is locked like a run and checked whole before it starts; WordNet-id reference folders are read by id, unreadable
references are replaced; wrong types in the Python API are one-line `VitalError`s. CLI cases run in-process
through `vital.cli.main`: exit 2 and one `error:` line."""

from __future__ import annotations

import ast
import os
import random
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vital
from vital.cli import build_parser, main
from vital.errors import VitalError
from vital.references.images import from_class_folder, from_folder, list_images
from vital.targets import Channel, Class

ROOT = Path(__file__).resolve().parents[1]


def _png(path: Path, seed: int, size: int = 40) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _cli(argv: list[str], capsys) -> tuple[int, list[str], str]:
    """(exit status, the `error:` lines, all of stderr) of one command."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, [ln for ln in err.splitlines() if ln.startswith("error:")], err


def _refused(argv: list[str], capsys, pattern: str) -> str:
    import re

    rc, errors, err = _cli(argv, capsys)
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert re.search(pattern, errors[0]), errors[0]
    return errors[0]


def _snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder` (hidden ones too) with its bytes, or the target of a link."""
    out: dict[str, bytes | str] = {}
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        out[key] = f"-> {os.readlink(p)}" if p.is_symlink() else (p.read_bytes() if p.is_file() else "dir")
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished one-step class run (random network's Fourier image: no references, seconds)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["class", "-m", "efficientnet_lite0", "-c", "1", "--refs", "none", "--method", "fourier", "--steps",
                 "1", "-o", str(out), "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def neuron_dir(tmp_path_factory) -> Path:
    """A finished one-step channel run: what an atlas shows."""
    w = tmp_path_factory.mktemp("neuron")
    _png(w / "photos" / "p.png", 0)
    assert main(["neuron", "-m", "efficientnet_lite0", "--channel", "_blocks.2:0", "--refs", str(w / "photos"),
                 "--method", "fourier", "--steps", "1", "-o", str(w / "run"), "-q"]) == 0
    return w / "run"


# ---- one claim for every command that writes a folder ---------------------------------------------------------

def _commands(out: Path, run: Path) -> dict[str, list]:
    """Each folder-writing command with --out `out`, in a form that reaches the claim cheaply."""
    return {
        "eval": ["eval", run, "-m", "efficientnet_lite0", "--judges", "", "-o", out, "-q"],
        "report": ["report", run, "-o", out],
        "compare": ["compare", "-m", "efficientnet_lite0", "--classes", "1", "--methods", "fourier", "--refs", "offline",
                    "--judges", "", "--no-fid", "--steps", "1", "-o", out, "-q"],
        "atlas": ["atlas", out, run, "-q"],
        "circuit": ["circuit", "-m", "efficientnet_lite0", "--layer", "_blocks.2", "--channel", "0", "--refs", run,
                    "--no-visualize", "-o", out, "-q"],
        "class": ["class", "-m", "efficientnet_lite0", "-c", "2", "--refs", "none", "--method", "fourier",
                  "--steps", "1", "-o", out, "-q"],
    }


FOREIGN = {"eval": "report.html", "report": "report.html", "compare": "table.md", "atlas": "index.html",
           "circuit": "circuit.json", "class": "contact_sheet.png"}


@pytest.mark.parametrize("command", sorted(FOREIGN))
def test_a_foreign_folder_is_never_written(command, run_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / FOREIGN[command]).write_text("the user's own file")
    before = _snapshot(tmp_path)
    _refused(_commands(out, run_dir)[command], capsys, "is not empty and holds no vital")
    assert _snapshot(tmp_path) == before  # not a byte changed, no lock or temporary folder left beside it


def test_own_output_is_replaced_only_with_overwrite(run_dir, tmp_path, capsys):
    out = tmp_path / "gallery"
    argv = _commands(out, run_dir)["report"]
    assert _cli(argv, capsys)[0] == 0
    (out / "stale.txt").write_text("left by the first report")
    _refused(argv, capsys, "holds the output of an earlier vital report; pass --overwrite")
    assert (out / "stale.txt").is_file()
    assert _cli([*argv, "--overwrite"], capsys)[0] == 0
    assert not (out / "stale.txt").exists() and (out / "report.html").is_file()  # replaced as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery"]


def test_one_commands_output_is_foreign_to_another(run_dir, tmp_path, capsys):
    out = tmp_path / "gallery"
    assert _cli(_commands(out, run_dir)["report"], capsys)[0] == 0
    _refused(_commands(out, run_dir)["eval"] + ["--overwrite"], capsys, "holds the output of vital report, not of "
             "vital eval")
    _refused(_commands(run_dir, run_dir)["report"] + ["--overwrite"], capsys, "holds a vital run, not of vital report")


def test_eval_writes_its_folder_whole(run_dir, tmp_path, capsys):
    out = tmp_path / "judged"
    assert _cli(_commands(out, run_dir)["eval"], capsys)[0] == 0
    names = sorted(p.name for p in out.iterdir())
    assert {"metrics.json", "report.html", "table.md", "table.json"} <= set(names)
    assert ".tmp-" not in (out / "table.json").read_text()  # the table names the folder where it ended up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["judged"]


def test_atlas_updates_its_own_folder_without_overwrite(neuron_dir, tmp_path, capsys):
    out = tmp_path / "site"
    argv = _commands(out, neuron_dir)["atlas"]
    assert _cli(argv, capsys)[0] == 0
    first = (out / "index.html").read_text()
    assert _cli(argv, capsys)[0] == 0  # incremental: its own folder is not foreign
    assert (out / "index.html").read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_a_symlinked_out_is_followed_and_nothing_is_left(run_dir, tmp_path, capsys):
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    argv = _commands(link, run_dir)["report"]
    assert _cli(argv, capsys)[0] == 0
    assert _cli([*argv, "--overwrite"], capsys)[0] == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert (target / "report.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no .tmp-*.old link, no lock


def test_an_over_long_out_name_is_one_line(run_dir, tmp_path, capsys):
    for argv in (_commands(tmp_path / ("x" * 300), run_dir)["report"],
                 _commands(tmp_path / ("y" * 300), run_dir)["class"]):
        _refused(argv, capsys, "bytes long; use a name under")
    assert list(tmp_path.iterdir()) == []


def test_a_batch_is_locked_like_a_run(tmp_path, capsys):
    out = tmp_path / "job"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from vital.outputs.claim import FolderLock
        with FolderLock({str(out)!r}):
            print("held", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    try:
        assert holder.stdout.readline().strip() == "held"
        _refused(["batch", "-m", "efficientnet_lite0", "--classes", "0", "--method", "fourier", "--refs", "none",
                  "--steps", "1", "-o", out, "-q"], capsys, rf"another vital process \(pid {holder.pid}\)")
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert not out.exists()


# ---- job files checked whole before any target ----------------------------------------------------------------

@pytest.fixture(scope="module")
def job_world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("jobs")
    for i in range(2):
        _png(w / "photos" / f"p{i}.png", i)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(w / "pwned"),))

    torch.save(Evil(), w / "evil.pth")
    head = 'model = "efficientnet_lite0"\nsteps = 1\n'
    refs = f'[references]\nsource = "folder"\npath = "{w / "photos"}"\nn = 2\n'
    (w / "layer.toml").write_text(head + '[targets]\nlayer = "_blocks.77"\nchannels = "0"\n' + refs)
    (w / "channels.toml").write_text(head + '[targets]\nlayer = "_blocks.7"\nchannels = "78-81"\n' + refs)
    (w / "pickle.toml").write_text(head + f'weights = "{w / "evil.pth"}"\n[targets]\nclasses = "1"\n' + refs)
    (w / "refs.toml").write_text(head + '[targets]\nclasses = "1"\n[references]\nsource = "class-folder"\n'
                                 f'path = "{w / "nowhere"}"\n')
    return w


@pytest.mark.parametrize("job, pattern", [
    ("layer", "model has no layer '_blocks.77'"),
    ("channels", r"channel 80 is out of range: layer '_blocks.7' has 80 channels"),
    ("pickle", "cannot read weights file .* as a PyTorch state dict"),
    ("refs", "references folder .*nowhere does not exist"),
])
def test_a_bad_job_is_refused_before_anything_runs(job_world, tmp_path, capsys, job, pattern):
    out = tmp_path / "results"
    line = _refused(["batch", job_world / f"{job}.toml", "-o", out, "-q"], capsys, pattern)
    assert "weights_only" not in line
    assert list(tmp_path.iterdir()) == [] and not (job_world / "pwned").exists()


# ---- misleading messages ---------------------------------------------------------------------------------------

def test_a_pickled_clip_checkpoint_is_a_vital_error(run_dir, job_world, tmp_path, capsys):
    line = _refused(["eval", run_dir, "--judges", "", "--clip-weights", job_world / "evil.pth", "-o",
                     tmp_path / "e", "-q"], capsys, "cannot read CLIP weights file .* Python objects")
    assert "weights_only" not in line and not (job_world / "pwned").exists()
    assert list(tmp_path.iterdir()) == []


def test_a_direction_of_the_wrong_size_says_so(job_world, tmp_path, capsys):
    np.save(tmp_path / "d.npy", np.ones(3, dtype=np.float32))
    _refused(["neuron", "-m", "efficientnet_lite0", "--direction", tmp_path / "d.npy", "--layer", "_blocks.7",
              "--refs", job_world / "photos", "-o", tmp_path / "o", "-q"], capsys,
             "has 3 values but layer '_blocks.7' has 80 channels")


def test_an_empty_layer_list_is_an_error(tmp_path, capsys):
    for flag in (",", " , "):
        _refused(["class", "-m", "efficientnet_lite0", "-c", "1", "--refs", "offline", "--layers", flag, "-o",
                  tmp_path / "o"], capsys, "names no layer")
    _refused(["mine", "efficientnet_lite0", "--layers", ",", "--images", tmp_path, "-o", tmp_path / "s"], capsys,
             "names no layer")
    assert list(tmp_path.iterdir()) == []


# ---- references ------------------------------------------------------------------------------------------------

@pytest.fixture()
def wordnet(tmp_path) -> Path:
    """An ImageNet train folder holding two classes: tiger cat (282, n02123159) and espresso (967, n07920052)."""
    train = tmp_path / "train"
    for wnid, seed in (("n02123159", 1), ("n07920052", 2)):
        for i in range(3):
            _png(train / wnid / f"{wnid}_{i}.JPEG", seed * 10 + i)
    return train


def test_a_wordnet_folder_is_read_by_id(wordnet, tmp_path, capsys):
    assert Path(from_class_folder(wordnet, 282, n=2).source).name == "n02123159"
    assert Path(from_class_folder(wordnet, 967, n=2).source).name == "n07920052"
    assert Path(from_class_folder(wordnet, "n07920052", n=2).source).name == "n07920052"
    with pytest.raises(VitalError, match=r"class 1 \(n01443537\) has no folder: out of range of the 2 class folders"):
        from_class_folder(wordnet, 1)
    from vital.references.refs_rule import ReferenceSpec

    sets = ReferenceSpec.from_flag(str(wordnet), n=2).resolve([Class(967), Class(282)])
    assert [Path(s.source).name for s in sets] == ["n07920052", "n02123159"]
    _refused(["class", "-m", "efficientnet_lite0", "-c", "1", "--refs", wordnet, "-o", tmp_path / "o"], capsys,
             r"class 1 \(n01443537\) has no folder")


def test_folders_that_are_not_imagenet_ids_stay_positional(tmp_path):
    for i, name in enumerate(["n00000001", "n00000002"]):  # WordNet-like, not ImageNet-1k classes
        _png(tmp_path / name / "a.png", i)
    assert Path(from_class_folder(tmp_path, 1).source).name == "n00000002"


def test_unreadable_references_are_replaced_from_the_folder(tmp_path):
    folder = tmp_path / "refs"
    good = _png(folder / "good.png", 0)
    for i in range(4):
        (folder / f"bad{i}.png").write_bytes(b"not an image" * (i + 1))
    import warnings

    for seed in range(6):
        refs = from_folder(folder, n=1, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = refs.load(lambda im: torch.from_numpy(np.asarray(im.resize((8, 8)))).permute(2, 0, 1))
        assert len(pixels) == 1
        assert [d["file"] for d in refs.describe()] == [str(good)]
        assert all(Path(p).name.startswith("bad") for p in refs.skipped)
        again = refs.load(lambda im: torch.zeros(3, 2, 2))  # a second load uses the same files, draws no more
        assert len(again) == 1 and [d["file"] for d in refs.describe()] == [str(good)]


def test_the_sample_is_unchanged_when_every_file_reads(tmp_path):
    """Replacements come after the sample: the drawn files are those of random.Random(seed).sample, as before."""
    for i in range(9):
        _png(tmp_path / f"{i}.png", i)
    files = list_images(tmp_path)
    for seed in (0, 3):
        assert from_folder(tmp_path, n=4, seed=seed).files == sorted(random.Random(seed).sample(files, 4))


# ---- the Python API -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, pattern", [
    (lambda: vital.load_model("resnet18", weights=5), "weights must be"),
    (lambda: Class("a"), "class index must be a whole number"),
    (lambda: Class(True), "class index must be a whole number"),
    (lambda: Class(2.0), "class index must be a whole number"),
    (lambda: Channel("_blocks.7", "3"), "channel must be a whole number"),
    (lambda: Channel(7, 3), "layer must be a dotted layer name"),
    (lambda: vital.mine(vital.load_model("efficientnet_lite0"), ["_blocks.2"], images=123), "images must be"),
    (lambda: vital.references.from_folder(123), "must be a path"),
    (lambda: vital.references.from_class_folder(None, 1), "must be a path"),
    (lambda: vital.visualize(vital.load_model("efficientnet_lite0"), Class(1), str(ROOT), steps=1, progress=False),
     "references must be ReferenceSet objects.*from_folder"),
])
def test_api_wrong_types_are_one_line(call, pattern):
    with pytest.raises(VitalError, match=pattern) as e:
        call()
    assert "\n" not in str(e.value)


def test_numpy_indices_are_whole_numbers():
    assert Class(np.int64(3)) == Class(3) and Channel("a", np.int32(2)).channel == 2


# ---- the command line itself ----------------------------------------------------------------------------------

def test_version(capsys):
    from importlib.metadata import version

    from vital._version import DISTRIBUTION

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"vital {version(DISTRIBUTION)}"


def test_every_option_field_is_a_flag_that_reaches_the_run():
    """The flags are generated from the option dataclasses: each field of RunOptions and of every method's options
    has its flag on `vital class`, and its value comes back under the field's name."""
    from vital.cli.options import HIDDEN, collect
    from vital.methods import METHODS, RunOptions

    parser = build_parser()
    names = {f.name for f in fields(RunOptions)} - HIDDEN
    for m in METHODS.values():
        names |= {f.name for f in fields(m.options)}
    assert {"layers", "relevance", "crops", "bn_weight", "feat_dist", "steps"} <= names
    values = {"bool": [], "Sequence[str]": ["a,b"], "Sequence[float]": ["1,2"], "float": ["0.5"], "int": ["3"]}
    argv = ["class", "-m", "x", "-c", "1", "--refs", "none", "-o", "o"]
    every = {f.name: f for f in [*fields(RunOptions), *(g for m in METHODS.values() for g in fields(m.options))]}
    for name in sorted(names):
        kind = next((k for k in values if k in str(every[name].type)), None)
        argv += [f"--{name.replace('_', '-')}", *values.get(kind, ["text"])]
    options = collect(parser.parse_args(argv))
    assert set(options) - {"progress"} == names


def test_cli_modules_are_small():
    """No module of the command line over 400 lines, no function over 60."""
    for path in (ROOT / "src" / "vital" / "cli").glob("*.py"):
        text = path.read_text()
        assert text.count("\n") <= 400, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 60, f"{path.name}: {node.name}"


def test_compare_and_circuit_claim_their_folders(run_dir, tmp_path, capsys):
    """Both write where they stand and are refused a second time without --overwrite; compare's table names its
    images under --out, never under a temporary name."""
    photos = tmp_path / "photos"
    _png(photos / "a.png", 1)
    compare = [a if a != "offline" else photos for a in _commands(tmp_path / "cmp", run_dir)["compare"]]
    circuit = [a if a != run_dir else photos for a in _commands(tmp_path / "circ", run_dir)["circuit"]] + ["-n", "1"]
    for name, argv in (("compare", [*compare, "--refs-flat", "-n", "1"]), ("circuit", circuit)):
        assert _cli(argv, capsys)[0] == 0, name
        _refused(argv, capsys, f"holds the output of an earlier vital {name}; pass --overwrite")
        assert _cli([*argv, "--overwrite"], capsys)[0] == 0, name
    table = (tmp_path / "cmp" / "table.json").read_text()
    assert ".tmp-" not in table and str(tmp_path / "cmp" / "fourier") in table
    assert (tmp_path / "circ" / "circuit.json").is_file() and (tmp_path / "circ" / "circuit.svg").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["circ", "cmp", "photos"]
    no_refs = [a if a != "offline" else "none" for a in _commands(tmp_path / "c2", run_dir)["compare"]]
    _refused(no_refs, capsys, "compare judges every method against real")
