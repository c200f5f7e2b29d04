"""vital.outputs.record: one reader and writer of record.json. Records written by earlier code (tests/data/old_records,
written by the code before RunRecord existed) read back to the same JSON and rerun to the same pixels (within the
rounding of any CPU: tests/pins.py); a batch job writes the same records and pixels; every hand-edited field is one
line naming the file and the field."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import class_job, noise_folder, pixels
from pins import TENSOR_RTOL, load_pins, mismatches, pin_parts

import vital
from vital.errors import VitalError
from vital.jobs import run_job
from vital.outputs.io import to_uint8
from vital.outputs.record import RECORD, RunRecord

OLD = Path(__file__).parent / "data" / "old_records"
PIXELS = load_pins(OLD / "pixels.npz")  # tests/fixtures/make_house_pins.py
VOLATILE = ("timings", "versions")  # what two runs of the same record may differ in
LOSSES = ("final_loss", "loss_curve")  # floats: equal within the rounding of another CPU (tests/pins.py)
CHAIN_REASON = "the rule chain lists every module from the target back to the shallowest layer"


# Fields that later options added to the record, each with the value that means "as before" (the option off, or
# the class image's pixel parameterisation, the only one older code had).
# fields added after the old records, at the values that reproduce them; a rerun of an old channel record pins
# `activation` to the 0.0 its run used (the channel default became 1.0 later: vital.methods.history, the method's declared history)
# and a class record's `param` to the "pixel" its run used (the class default became "fourier" later)
ADDED_LATER = {"options": {"activation": (None, 0.0), "sliced": (None,), "projections": (None,), "augment": (None,),
                           "param": (None, "pixel"), "relevance_rules": (None,)},
               "recipe": {"param": ("pixel",), "activation": (0.0,), "sliced": (0.0,), "augment": ("none",),
                          "relevance_rules": ("zplus",),
                          # the engine that ran, recorded later: the old channel run's was the rule chain too
                          "relevance_backend": ("chain",), "relevance_reason": (CHAIN_REASON,)}}


def _stable(record: dict) -> dict:
    """What two runs of the same record agree on exactly (losses aside: `_same_record`)."""
    out = {k: v for k, v in record.items() if k not in VOLATILE + LOSSES}
    for section, added in ADDED_LATER.items():
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if not (k in added and v in added[k])}
    return out


def _same_record(new: dict, old: dict) -> None:
    """Every field equal, the losses within TENSOR_RTOL of the largest (another CPU's kernels round them
    differently)."""
    assert _stable(new) == _stable(old)
    for key in LOSSES:
        a, b = np.asarray(new.get(key, []), float), np.asarray(old.get(key, []), float)
        assert a.shape == b.shape, key
        assert np.abs(a - b).max(initial=0.0) <= TENSOR_RTOL * max(np.abs(b).max(initial=0.0), 1e-12), key


def test_records_read_back_to_the_json_they_were_read_from():
    for path in [OLD / "class" / RECORD, OLD / "neuron" / RECORD, *sorted((OLD / "batch").glob(f"*/{RECORD}"))]:
        data = json.loads(path.read_text())
        rec = RunRecord.read(path)
        assert rec.as_json() == data, path
        assert list(rec.as_json()) == list(data)  # the same keys in the same order


@pytest.mark.integration
@pytest.mark.parametrize("name", ["class", "neuron"])
def test_old_records_rerun_to_the_same_pixels_and_record(name, tmp_path):
    again = vital.rerun(OLD / name, progress=False)
    got = pin_parts({str(i): to_uint8(im) for i, im in enumerate(again.images)}, images=True)
    assert not mismatches(got, PIXELS[name]), mismatches(got, PIXELS[name])
    again.save(tmp_path / "again")
    new = json.loads((tmp_path / "again" / RECORD).read_text())
    old = json.loads((OLD / name / RECORD).read_text())
    _same_record(new, old)


@pytest.mark.integration
def test_a_record_run_one_step_longer_fails_the_pixel_pin():
    """The pixel pins see a wrong program: the class record with three steps instead of two is far outside them."""
    data = json.loads((OLD / "class" / RECORD).read_text())
    data["options"]["steps"] = 3
    longer = vital.rerun(data, progress=False)
    got = pin_parts({str(i): to_uint8(im) for i, im in enumerate(longer.images)}, images=True)
    assert len(mismatches(got, PIXELS["class"])) == 2


def test_a_batch_job_writes_the_same_records_and_pixels_as_before(tmp_path):
    refs = noise_folder(tmp_path / "refs", 6)
    run_job(class_job(refs, options={"param": "pixel"}), tmp_path / "out", progress=False)  # the image they had
    got = pin_parts(pixels(tmp_path / "out"), images=True)
    assert not mismatches(got, PIXELS["batch"]), mismatches(got, PIXELS["batch"])
    for folder in sorted((OLD / "batch").iterdir()):
        old = (folder / RECORD).read_text().replace("/tmp/ho/batchrefs", str(refs.resolve()))
        new = json.loads((tmp_path / "out" / folder.name / RECORD).read_text())
        _same_record(new, json.loads(old))


def test_select_is_one_target_of_a_batch_as_a_run_of_its_own():
    rec = RunRecord.read(OLD / "class")
    one = rec.select(1, [0.5, 0.25], {"index": 3})
    assert [t.as_json() for t in one.targets] == [rec.targets[1].as_json()]
    assert one.references == [rec.references[1]] and one.final_loss == [rec.final_loss[1]]
    assert one.loss_curve == [0.5, 0.25] and one.batch == {"index": 3, "position": 1} and one.outputs == []
    assert len(rec.targets) == 2  # the batch's record is left as it was


def _edit(data: dict, where: str, value) -> dict:
    """A copy of `data` with the value at `where` ("a.b[0].c") replaced, or deleted when `value` is DELETE."""
    out = copy.deepcopy(data)
    parts = [p for chunk in where.split(".") for p in chunk.replace("]", "").split("[")]
    node = out
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    last = int(parts[-1]) if isinstance(node, list) else parts[-1]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return out


DELETE = object()
# (field edited, new value, the field the error must name)
EDITS = [
    ("targets[0].channel", "abc", "targets[0].channel"),
    ("targets[0].layer", DELETE, "targets[0].layer"),
    ("targets[0].kind", "pixel", "targets[0].kind"),
    ("targets[0].position", [1, "x"], "targets[0].position"),
    ("model", "efficientnet_lite0", "model"),
    ("model.name", 5, "model.name"),
    ("model.weights", DELETE, "model.weights"),
    ("final_loss", ["x"], "final_loss[0]"),
    ("metrics", [1, 2], "metrics"),
    ("metrics", {"a.png": [1]}, "metrics.a.png"),
    ("metrics", {"a.png": {"rank": [1]}}, "metrics.a.png.rank"),
    ("outputs", "class0001.png", "outputs"),
    ("outputs[0]", "class0001.png", "outputs[0]"),
    ("outputs[0].image", DELETE, "outputs[0].image"),
    ("outputs[0].target_index", 7, "outputs[0].target_index"),
    ("outputs[0].reference_thumbnails", [3], "outputs[0].reference_thumbnails[0]"),
    ("references[0].files[0].sha256", DELETE, "references[0].files[0].sha256"),
    ("references[0].files", DELETE, "references[0].files"),
    ("references[0].files[0]", "x.png", "references[0].files[0]"),
    ("references[0].origin.seed", "4", "references[0].origin.seed"),
    ("references[0].origin.class", DELETE, "references[0].origin.class"),
    ("references[0]", "refs", "references[0]"),
    ("options", [], "options"),
    ("method", None, "method"),
    ("seed", 1.5, "seed"),
]


@pytest.mark.parametrize(("where", "value", "named"), EDITS, ids=[e[0] + "=" + str(e[1])[:10] for e in EDITS])
def test_a_hand_edited_record_is_one_line_naming_file_and_field(tmp_path, where, value, named):
    data = json.loads((OLD / "neuron" / RECORD).read_text())
    data["outputs"] = [{"target": "_blocks.10:3", "target_index": 0, "copy": 0, "label": "x",
                        "image": "a.png", "transparency": "b.png", "reference_thumbnails": []}]
    path = tmp_path / RECORD
    path.write_text(json.dumps(_edit(data, where, value)))
    with pytest.raises(VitalError) as e:
        RunRecord.read(path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message and named in message, message
    with pytest.raises(VitalError, match=named.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        vital.rerun(tmp_path)  # rerun reads through the same checks, before anything is loaded


def test_missing_and_wrong_top_level_keys(tmp_path):
    path = tmp_path / RECORD
    for data, message in [([1, 2], "not a run record"), ({"method": "vital"}, "lacks model, targets, options"),
                          ({**json.loads((OLD / "class" / RECORD).read_text()), "references": [None]},
                           "2 targets but 1 reference sets")]:
        path.write_text(json.dumps(data))
        with pytest.raises(VitalError, match=message):
            RunRecord.read(path)
    path.write_bytes(b"\xff{")
    with pytest.raises(VitalError, match="cannot read the run record"):
        RunRecord.read(tmp_path)
    shutil.rmtree(tmp_path)
    with pytest.raises(VitalError, match="no run record"):
        RunRecord.read(tmp_path)
