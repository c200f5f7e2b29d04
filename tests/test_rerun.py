"""A run repeated from its record.json gives the same image: photo views, files, and a mined store's patches."""

import json
import shutil

import pytest
import torch

import vital
from vital.cli import main
from vital.errors import VitalError
from vital.references.images import from_files
from vital.references.photos import photo_path, photo_references

pytestmark = pytest.mark.integration


def _same(first: vital.Result, record_dir, tmp_path) -> None:
    again = vital.rerun(record_dir / "record.json", progress=False)
    assert torch.equal(again.images, first.images)


def test_rerun_photo_and_file_references(lite0, tmp_path):
    shutil.copy(photo_path("coffee.png"), tmp_path / "coffee.png")
    refs = [photo_references(282, n=3, seed=2), from_files([tmp_path / "coffee.png"])]
    first = vital.visualize(lite0, [vital.Class(282), vital.Class(967)], refs, steps=2, seed=3, progress=False,
                            jitter=5)
    first.save(tmp_path / "run")
    _same(first, tmp_path / "run", tmp_path)
    assert main(["rerun", str(tmp_path / "run"), "--out", str(tmp_path / "again"), "-q"]) == 0
    assert (tmp_path / "again" / "class0967.png").read_bytes() == (tmp_path / "run" / "class0967.png").read_bytes()


def test_rerun_store_patches_and_changed_files(lite0, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("chelsea.png", "coffee.png", "camera.png"):
        shutil.copy(photo_path(name), folder / name)
    store = vital.mine(lite0, ["_blocks.4"], folder, k=2, out=tmp_path / "store", progress=False)
    first = vital.visualize(lite0, vital.Channel("_blocks.10", 3), store.references("_blocks.4", 3, kind="patches"),
                            steps=2, progress=False)
    first.save(tmp_path / "run")
    _same(first, tmp_path / "run", tmp_path)

    files = vital.visualize(lite0, vital.Class(1), from_files([folder / "coffee.png"]), steps=1, progress=False)
    files.save(tmp_path / "files")
    shutil.copy(folder / "camera.png", folder / "coffee.png")  # the reference changed since the run
    with pytest.warns(UserWarning, match="1 of 1 reference images differ"):
        vital.rerun(tmp_path / "files", progress=False)
    (folder / "coffee.png").unlink()
    with pytest.raises(VitalError, match="reference file"):
        vital.rerun(tmp_path / "files", progress=False)


def test_rerun_refuses_custom_modules(tiny_model, tmp_path):
    res = vital.visualize(tiny_model, vital.Class(1), photo_references(282, n=2), steps=1, progress=False)
    res.save(tmp_path)
    rec = json.loads((tmp_path / "record.json").read_text())
    with pytest.raises(VitalError, match="custom nn.Module"):
        vital.rerun(rec)


def _entry(refs) -> dict:
    """A reference entry as the run record keeps it."""
    return {"source": refs.source, "requested": refs.requested, "files": refs.describe(), "origin": refs.origin}


def test_references_are_rebuilt_from_the_origin_not_from_strings(tmp_path):
    from conftest import noise_folder, tiny_sequential

    from vital.references.images import from_folder, from_images
    from vital.run.repeat import references_from_record

    photos = photo_references(967, n=3, seed=5)
    entry = _entry(photos)
    entry["source"] = "renamed by hand"
    for f in entry["files"]:
        f["file"] = "view"  # no name left to parse
    assert references_from_record(entry).describe() == photos.describe()

    store = vital.mine(tiny_sequential(), ["4"], noise_folder(tmp_path / "imgs", 5), k=3, out=tmp_path / "store",
                       progress=False)
    patches = store.references("4", 2, kind="patches", n=2)
    entry = {**_entry(patches), "source": "somewhere"}
    again = references_from_record(json.loads(json.dumps(entry)))
    assert again.describe() == patches.describe() and again.origin == patches.origin

    folder = from_folder(tmp_path / "imgs", n=3, seed=1)
    again = references_from_record(_entry(folder))
    assert again.files == folder.files and again.origin == folder.origin
    with pytest.raises(VitalError, match="images in memory"):
        references_from_record(_entry(from_images([photos.images[0][1]])))


def test_records_without_an_origin_still_rerun():
    """Records written before origins were recorded: the origin is read once from the old strings."""
    from vital.outputs.record import ReferenceEntry
    from vital.run.repeat import references_from_record

    photos = photo_references(282, n=2, seed=4)
    old = {"source": photos.source, "requested": 2, "files": photos.describe()}
    assert ReferenceEntry.from_json(old).origin == photos.origin
    assert references_from_record(old).describe() == photos.describe()


def test_the_run_record_keeps_each_reference_origin(tiny_model, tmp_path):
    refs = [photo_references(282, n=2, seed=1), from_files([photo_path("coffee.png")])]
    res = vital.visualize(tiny_model, [vital.Class(1), vital.Class(2)], refs, steps=1, progress=False)
    res.save(tmp_path)
    rec = json.loads((tmp_path / "record.json").read_text())
    assert [r["origin"] for r in rec["references"]] == [r.origin for r in refs]


def test_records_from_before_typed_options_give_valid_arguments():
    from vital.methods import split_options
    from vital.outputs.record import RunRecord

    def run_arguments(record: dict) -> dict:  # a whole record around the old options, read as vital.rerun reads it
        targets = [{"kind": "class", "index": 0} if t["kind"] == "class" else {"kind": "channel", "layer": "x",
                   "channel": 0} for t in record["targets"]]
        return RunRecord.from_json({**record, "model": {"name": "m", "weights": "w"}, "targets": targets,
                                    "references": [None]}).run_arguments()

    old = {"steps": 5, "setting": 1, "seed": 2, "layers": None, "layer_weights": None, "tv_l2": None, "tv_l1": None,
           "l2": None, "feat_dist": 1.0, "jitter": None, "flip": None, "lr": 0.1, "warmup": None,
           "relevance": "lrp", "extra": {"maco_magnitude": "mag.pt", "maco_crops": 2}}
    maco = run_arguments({"method": "maco", "targets": [{"kind": "class"}], "options": old})
    assert maco == {"method": "maco", "steps": 5, "setting": 1, "seed": 2, "tv_l2": None, "tv_l1": None, "l2": None,
                    "jitter": None, "flip": None, "lr": 0.1, "warmup": None, "magnitude": "mag.pt", "crops": 2}
    run, own = split_options("maco", {k: v for k, v in maco.items() if k != "method"})
    assert own.magnitude == "mag.pt" and own.crops == 2 and run["lr"] == 0.1
    cls = run_arguments({"method": "vital", "targets": [{"kind": "class"}], "options": {**old, "extra": {}}})
    assert "relevance" not in cls and "extra" not in cls and cls["feat_dist"] == 1.0
    split_options("vital", {k: v for k, v in cls.items() if k != "method"})
    neuron = run_arguments({"method": "vital", "targets": [{"kind": "channel"}], "options": {**old, "extra": {}}})
    assert (neuron["relevance"], neuron["mask"], neuron["param"]) == ("lrp", "multiply", "pixel")


def test_rerun_says_whether_it_is_on_the_recorded_machine(lite0, tmp_path, capsys):
    """Same machine and build: pixel-identical, and said so; a record from other kernels or another torch is told
    apart by name; an old record without a machine entry says it cannot tell."""
    from vital.outputs.record import RunRecord
    from vital.run.repeat import reproducibility

    first = vital.visualize(lite0, vital.Class(282), photo_references(282, n=2), steps=1, progress=False)
    first.save(tmp_path / "run")
    rec = RunRecord.read(tmp_path / "run")
    assert set(rec.versions["machine"]) >= {"cpu", "kernels", "threads"}
    again = vital.rerun(rec, progress=False)
    line = reproducibility(rec, again)
    assert line.startswith("the same machine and build") and "pixel-identical" in line
    loss = f"{rec.final_loss[0]:.4g}"
    assert line.endswith(f"final loss {loss} -> {loss}")

    data = json.loads((tmp_path / "run" / "record.json").read_text())
    here = data["versions"]["machine"]["kernels"]
    data["versions"]["machine"]["kernels"] = "DEFAULT" if here != "DEFAULT" else "AVX2"
    data["versions"]["torch"] = "2.0.0"
    line = reproducibility(RunRecord.from_json(data))
    assert line.startswith("another machine or build") and "torch 2.0.0 -> " in line and f"-> {here}" in line

    del data["versions"]["machine"]
    assert "does not name the machine" in reproducibility(RunRecord.from_json(data))

    assert main(["rerun", str(tmp_path / "run"), "--out", str(tmp_path / "again"), "-q"]) == 0
    assert "the same machine and build" in capsys.readouterr().out
