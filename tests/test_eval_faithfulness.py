"""`vital eval --faithfulness` on a real offline model (efficientnet_lite0, one step): a class run and a neuron run
each get the column, with the value of an independent call of the metric on the same files; a neuron run alone is
judged; without the flag a neuron run is refused with the fix."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest

import vital
import vital.cli
from vital.errors import VitalError
from vital.metrics.faithful_runs import natural_pool, references01
from vital.metrics.faithfulness import floor_images, path_similarity, split_references
from vital.models import load_model
from vital.outputs.record import RunRecord
from vital.references.photos import offline_photo_files
from vital.run.repeat import references_from_record


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    w = tmp_path_factory.mktemp("faith_eval")
    photos = w / "photos"
    photos.mkdir()
    for f in offline_photo_files()[:6]:
        shutil.copy(f, photos)
    common = ["--model", "efficientnet_lite0", "--steps", "1", "--method", "fourier", "-q"]
    assert vital.cli.main(["class", "--class", "282", "--refs", "offline", "-n", "4", "--out", str(w / "cls"),
                           *common]) == 0
    assert vital.cli.main(["neuron", "--channel", "_blocks.4:3", "--refs", str(photos), "-n", "6",
                           "--out", str(w / "neu"), *common]) == 0
    return w


def _expected(run_dir) -> float | None:
    """The metric called directly on the run's image and rebuilt references, floor from the default pool."""
    rec = RunRecord.read(run_dir)
    model = load_model(rec.model.name)
    out = rec.outputs[0]
    real = references01(model, references_from_record(rec.reference_of(out)))
    target = rec.target_of(out).target
    floor = floor_images(model, target, natural_pool(), len(split_references(real)[0]))
    return path_similarity(model, target, [run_dir / out.image], real, floor).summary


def test_eval_faithfulness_on_a_class_and_a_neuron_run(runs, capsys):
    out = runs / "eval"
    assert vital.cli.main(["eval", str(runs / "cls"), str(runs / "neu"), "--faithfulness", "--judges", "",
                           "-m", "efficientnet_lite0", "-o", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "faithfulness" in printed.splitlines()[0]
    table = json.loads((out / "table.json").read_text())
    assert "faithfulness" in table["columns"]
    row = table["rows"]["fourier"]
    paths = table["meta"]["faithfulness"]
    assert {p["kind"] for p in paths} == {"class", "channel"} and row["n"] == 1  # one class visual (top-k rows)
    by_kind = {p["kind"]: p for p in paths}
    for kind, folder in (("class", "cls"), ("channel", "neu")):
        want = _expected(runs / folder)
        got = by_kind[kind]["summary"]
        assert (got is None and want is None) or got == pytest.approx(want, abs=1e-9)
    assert by_kind["channel"]["layers"][-1] == "_blocks.4"
    values = [p["summary"] for p in paths if p["summary"] is not None]
    assert row["faithfulness"] == (pytest.approx(sum(values) / len(values)) if values else None)


def test_a_neuron_run_alone_needs_the_flag(runs):
    from vital.cli.evaluation import _runs

    args = argparse.Namespace(runs=[str(runs / "neu")], faithfulness=False, fid=False, refs=None, clip_weights=None)
    with pytest.raises(VitalError, match="neuron runs are judged with --faithfulness"):
        _runs(args)
    assert vital.cli.main(["eval", str(runs / "neu"), "--faithfulness", "--judges", "", "-o", str(runs / "e2"),
                           "-q"]) == 0
    table = json.loads((runs / "e2" / "table.json").read_text())
    assert table["columns"] == ["n", "faithfulness", "faithfulness n"]
    assert list(table["rows"]) == ["fourier"]
