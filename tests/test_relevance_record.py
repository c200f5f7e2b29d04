"""The record names the relevance engine that ran and why; the atlas's neuron page shows it; `vital rerun` warns
when its relevance comes from another engine than the recorded run's."""

from __future__ import annotations

import json
import warnings

import pytest
from conftest import noise_folder

import vital
from vital.pages.atlas import build_atlas
from vital.references.images import from_folder


def test_the_record_names_the_engine_and_why(tiny_model, tmp_path):
    """TinyNet is not a family the rule chain lists: the modified-gradient rules run, and the record says why."""
    refs = from_folder(noise_folder(tmp_path / "refs", 3), n=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = vital.visualize(tiny_model, vital.Channel("stage2", 1), refs, steps=1, progress=False)
        none = vital.visualize(tiny_model, vital.Channel("stage2", 1), refs, steps=1, progress=False,
                               relevance="none")
    assert res.run.recipe["relevance_backend"] == "modified-gradient"
    assert res.run.recipe["relevance_reason"].startswith("the rule chain does not apply")
    assert "relevance_backend" not in none.run.recipe  # no relevance ran


@pytest.mark.integration
def test_the_atlas_shows_the_engine_and_rerun_warns_when_it_changes(lite0, tmp_path):
    refs = from_folder(noise_folder(tmp_path / "refs", 3), n=3)
    first = vital.visualize(lite0, vital.Channel("_blocks.4", 3), refs, steps=1, progress=False)
    assert first.run.recipe["relevance_backend"] == "chain"
    first.save(tmp_path / "runs" / "run")
    build_atlas(tmp_path / "site", [tmp_path / "runs"], progress=False)
    page = (tmp_path / "site" / "neurons" / "_blocks_4" / "3.html").read_text()
    assert "relevance: lrp, by the chain engine: the rule chain lists every module" in page

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same engine: no warning
        vital.rerun(tmp_path / "runs" / "run", progress=False)
    path = tmp_path / "runs" / "run" / "record.json"
    record = json.loads(path.read_text())
    record["recipe"]["relevance_backend"] = "modified-gradient"  # as if an older vital had chosen another engine
    path.write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="recorded run used the modified-gradient engine"):
        vital.rerun(tmp_path / "runs" / "run", progress=False)
