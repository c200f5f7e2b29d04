"""Paths read from a store, a record or a circuit stay inside their root, and hand-edited stores, records and
circuits are one-line errors in the atlas, the report and rerun, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import vital
from vital.errors import VitalError
from vital.models import load_model
from vital.pages.atlas import build_atlas
from vital.pages.report import entries_from_run, gallery_from_runs
from vital.references.mining import MiningStore, mine


def _photos(folder: Path, n: int = 4, seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store, a neuron run with file references from a folder, a run with references from the store."""
    root = tmp_path_factory.mktemp("confine")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    model = load_model(net, size=32, name="net")
    photos = _photos(root / "photos")
    _photos(root / "elsewhere", 1, seed=9)
    store = mine(model, ["3"], photos, k=2, out=root / "store", progress=False)
    refs = vital.references.from_folder(root / "photos", n=2, seed=0)
    vital.visualize(model, vital.Channel("3", 1), refs, steps=1, progress=False).save(root / "run")
    mined = store.references("3", 1, kind="images", n=2)
    vital.visualize(model, vital.Channel("3", 2), mined, steps=1, progress=False).save(root / "mined_run")
    return root


def _copy(src: Path, dst: Path, edit=None, name: str = "record.json") -> Path:
    shutil.copytree(src, dst)
    if edit is not None:
        data = json.loads((dst / name).read_text())
        edit(data)
        (dst / name).write_text(json.dumps(data))
    return dst


def _one_line(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message, message
    for p in parts:
        assert p in message, message


# ---- stores ---------------------------------------------------------------------------------------------------

def test_a_store_file_name_outside_its_image_root_is_refused(world, tmp_path):
    def climb(files):
        files[0] = "../elsewhere/0.png"

    store = _copy(world / "store", tmp_path / "store", climb, "files.json")
    with pytest.raises(VitalError) as e:
        MiningStore.load(store)
    _one_line(e, "files.json", "../elsewhere/0.png", "outside")
    for bad in ("/etc/passwd", "a/../../x.png"):
        (store / "files.json").write_text(json.dumps([bad, "1.png", "2.png", "3.png"]))
        with pytest.raises(VitalError, match="outside"):
            MiningStore.load(store)
    with pytest.raises(VitalError, match="outside"):  # and so the atlas never publishes a crop of it
        build_atlas(tmp_path / "site", [store], progress=False)


@pytest.mark.parametrize(("field", "value", "named"), [
    ("preprocessing", None, "preprocessing"), ("preprocessing.interpolation", "evil", "preprocessing.interpolation"),
    ("preprocessing.size", -5, "preprocessing.size"), ("preprocessing.mean", [0.5], "preprocessing.mean"),
    ("layers", [], "layers"), ("layers.3.channels", "six", "layers.3.channels"), ("k", "2", "k"),
    ("model", 3, "model"), ("dataset.root", None, "dataset.root")])
def test_a_hand_edited_store_index_is_one_line_naming_file_and_field(world, tmp_path, field, value, named):
    def edit(index):
        *path, last = field.split(".")
        node = index
        for p in path:
            node = node[p]
        if value is None:
            del node[last]
        else:
            node[last] = value

    store = _copy(world / "store", tmp_path / "store", edit, "index.json")
    with pytest.raises(VitalError) as e:
        MiningStore.load(store)
    _one_line(e, str(store / "index.json"), named)
    with pytest.raises(VitalError, match="index.json"):
        build_atlas(tmp_path / "site", [store], progress=False)


# ---- records --------------------------------------------------------------------------------------------------

def test_a_record_reference_outside_the_run_folder_is_shown_only_if_it_is_the_file_the_run_used(world, tmp_path):
    [entry] = entries_from_run(world / "run")
    assert len(entry.references) == 2  # the run's own reference files, outside its folder, unchanged since

    def elsewhere(rec):
        rec["references"][0]["files"][0]["file"] = str(world / "elsewhere" / "0.png")  # any image on disk

    run = _copy(world / "run", tmp_path / "run", elsewhere)
    with pytest.raises(VitalError) as e:
        gallery_from_runs([run])
    _one_line(e, "record.json", "elsewhere/0.png", "outside its run folder")

    def changed(rec):  # the run's own file, but the record says it had other bytes
        rec["references"][0]["files"][1]["sha256"] = "0" * 64

    with pytest.raises(VitalError, match="not the recorded ones"):
        gallery_from_runs([_copy(world / "run", tmp_path / "run2", changed)])


def test_a_record_may_name_files_inside_its_run_folder_or_its_store(world, tmp_path):
    [entry] = entries_from_run(world / "mined_run")  # images of the store the record names
    assert [p.parent for p in entry.references] == [world / "photos"] * 2

    def inside(rec):
        rec["references"][0]["files"][0] = {"file": str(run / "mine.png"), "sha256": "not the hash"}

    run = tmp_path / "run"
    _copy(world / "run", run, inside)
    shutil.copy(world / "elsewhere" / "0.png", run / "mine.png")
    [entry] = entries_from_run(run)
    assert entry.references[0] == run / "mine.png"

    def other_store(rec):  # a store the record does not name gives no licence
        rec["references"][0]["files"][0] = {"file": str(world / "elsewhere" / "0.png"), "sha256": "x"}

    with pytest.raises(VitalError, match="outside its run folder"):
        entries_from_run(_copy(world / "mined_run", tmp_path / "mined", other_store))


def test_an_output_behind_a_symbolic_link_out_of_the_run_folder_is_refused(world, tmp_path):
    run = _copy(world / "run", tmp_path / "run")
    image = json.loads((run / "record.json").read_text())["outputs"][0]["image"]
    (run / image).unlink()
    (run / image).symlink_to(world / "elsewhere" / "0.png")
    with pytest.raises(VitalError, match="outside its run folder"):
        gallery_from_runs([run])


# ---- hand-edited records and circuits in the atlas: one line, never a traceback --------------------------------

def _set(path: str, value):
    def edit(data):
        *head, last = path.replace("]", "").replace("[", ".").split(".")
        node = data
        for p in head:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is None:
            del node[int(last) if isinstance(node, list) else last]
        else:
            node[int(last) if isinstance(node, list) else last] = value
    return edit


@pytest.mark.parametrize(("field", "value"), [
    ("targets[0].channel", "abc"), ("model", "net"), ("final_loss", ["x"]), ("metrics", [1]),
    ("outputs", "class.png"), ("outputs[0]", "class.png"), ("targets[0].layer", None), ("outputs[0].image", 5)])
def test_atlas_over_a_hand_edited_record_is_one_line(world, tmp_path, field, value):
    run = _copy(world / "run", tmp_path / "runs" / "run", _set(field, value))
    with pytest.raises(VitalError) as e:
        build_atlas(tmp_path / "site", [tmp_path / "runs"], progress=False)
    _one_line(e, str(run / "record.json"), field.split(".")[0].split("[")[0])


@pytest.mark.parametrize(("field", "value"), [("channel", "abc"), ("layer", None), ("layers", "1"),
                                              ("sources.3", [{"layer": "3"}]), ("edges", "x")])
def test_atlas_over_a_hand_edited_circuit_is_one_line(world, tmp_path, field, value):
    (tmp_path / "circ").mkdir()
    data = {"format": "vital-circuit/1", "model": "net", "layer": "3", "channel": 1, "relevance": "lrp",
            "references": 2, "layers": ["1"], "sources": {"3": []}, "edges": []}
    _set(field, value)(data)
    (tmp_path / "circ" / "circuit.json").write_text(json.dumps(data))
    with pytest.raises(VitalError) as e:
        build_atlas(tmp_path / "site", [tmp_path / "circ"], progress=False)
    _one_line(e, "circuit.json", field.split(".")[0])
