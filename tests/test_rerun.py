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
