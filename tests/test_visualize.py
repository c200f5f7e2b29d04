import json

import numpy as np
import pytest
import torch
from PIL import Image

import vital
from vital.errors import VitalError
from vital.features import FeatureExtractor
from vital.objectives.sort_matching import quantile_prototype, sort_matching_loss
from vital.references.images import from_images


def _refs(seed: int, shift: float) -> vital.references.ReferenceSet:
    rng = np.random.default_rng(seed)
    ims = [Image.fromarray(np.clip(rng.normal(128 + shift, 40, (40, 40, 3)), 0, 255).astype(np.uint8))
           for _ in range(6)]
    return from_images(ims, source=f"noise{seed}")


def test_class_run_objective_equals_independent_computation(tiny_model):
    """The first logged loss is the sort-matching loss of the seeded initial image (the pixel image: a seeded normal
    draw), recomputed here by hand."""
    refs = _refs(0, 0)
    res = vital.visualize(tiny_model, vital.Class(3), refs, steps=3, progress=False, jitter=0, seed=5, param="pixel")
    layers = res.record["objective"]["terms"][1]["layers"]
    assert layers == ["stem", "stage1.1", "stage2.1"]  # the generic rule: stem + end of each resolution stage
    fx = FeatureExtractor(tiny_model.module, layers)
    ref_feats = fx(refs.load(tiny_model.transform()))
    x0 = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    feats = fx(x0)
    expected = sum(sort_matching_loss(feats[n], quantile_prototype(ref_feats[n])) for n in layers)
    assert res.history[0].item() == pytest.approx(expected.item(), rel=1e-5)
    assert res.history[-1].item() < res.history[0].item()


def test_result_save_writes_everything(tiny_model, tmp_path):
    res = vital.visualize(tiny_model, [vital.Class(1), vital.Class(2)], [_refs(0, -30), _refs(1, 30)], steps=4,
                          progress=False, seed=7)
    paths = res.save(tmp_path)
    assert [p.name for p in paths["images"]] == ["class0001.png", "class0002.png"]
    rgba = Image.open(paths["transparency"][0])
    assert rgba.mode == "RGBA" and rgba.size == (32, 32)
    assert Image.open(paths["sheet"][0]).size[0] > 0
    rec = json.loads((tmp_path / "record.json").read_text())
    assert rec["method"] == "vital" and rec["seed"] == 7 and rec["model"]["name"] == "tiny"
    assert rec["targets"][1]["index"] == 2 and rec["loop"]["stages"] == [{"steps": 4, "downsample": 1}]
    assert len(rec["references"][0]["files"]) == 6 and len(rec["references"][0]["files"][0]["sha256"]) == 64
    assert {"torch", "vital", "python"} <= set(rec["versions"]) and rec["timings"]["step_ms"] > 0
    saved = np.asarray(Image.open(paths["images"][1]))
    assert np.array_equal(saved, (res.images[1].clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy())


def test_rerun_from_record_options_is_identical(tiny_model):
    """Every option of a run, each away from its default, goes through the JSON record and `vital.rerun`'s
    arguments unchanged, and gives the same image."""
    from vital.methods import RunOptions, get_method, option_names
    from vital.outputs.record import RunRecord

    refs = _refs(0, 0)
    given = dict(steps=4, setting=2, seed=4, tv_l2=0.01, tv_l1=0.001, l2=0.002, jitter=3, flip=True, lr=0.3,
                 warmup=2, layers=["stem", "stage1.1"], layer_weights=[0.5, 2.0], feat_dist=0.5,
                 relevance="guided-backprop", mask="multiply", target_weight=0.5, unweighted=0.25, param="pixel",
                 copies=2, diversity=0.1, diversity_layer="stage1.1", activation=0.5, sliced=0.5, projections=5,
                 augment="scale-rotate", relevance_rules={"Conv2d": "z+"})  # the default rules as a map: guided
    # backprop refuses any other
    assert set(given) == set(option_names("vital")) - {"progress"}  # a new option must be added here
    defaults = {**vars(RunOptions()), **vars(get_method("vital").options())}
    assert all(given[k] != defaults[k] for k in given)
    target = vital.Channel("stage2", 3)
    a = vital.visualize(tiny_model, target, refs, method="vital", progress=False, **given)
    args = RunRecord.from_json(json.loads(json.dumps(a.record))).run_arguments()
    assert args == {"method": "vital", **given}
    b = vital.visualize(tiny_model, target, refs, progress=False, **args)
    assert torch.equal(a.images, b.images)
    assert b.record["options"] == a.record["options"] and b.record["loop"] == a.record["loop"]


def test_setting0_reencodes_references_at_low_resolution(tiny_model):
    res = vital.visualize(tiny_model, vital.Class(0), _refs(0, 0), steps=4, setting=0, progress=False)
    assert [s["downsample"] for s in res.record["loop"]["stages"]] == [2, 1]
    assert res.history.shape == (6, 1)


def test_bad_input(tiny_model):
    with pytest.raises(VitalError, match="out of range"):
        vital.visualize(tiny_model, vital.Class(10), _refs(0, 0), steps=1, progress=False)
    with pytest.raises(VitalError, match="needs reference images"):
        vital.visualize(tiny_model, vital.Class(1), None, steps=1, progress=False)
    with pytest.raises(VitalError, match=r"method 'vital' has no option\(s\) \['tv'\]; valid: .*layers.*tv_l2"):
        vital.visualize(tiny_model, vital.Class(1), _refs(0, 0), steps=1, progress=False, tv=1)
    with pytest.raises(VitalError, match=r"method 'pixel' has no option\(s\) \['relevance'\]"):
        vital.visualize(tiny_model, vital.Class(1), None, method="pixel", steps=1, progress=False, relevance="lrp")
    with pytest.raises(VitalError, match="unknown method"):
        vital.visualize(tiny_model, vital.Class(1), _refs(0, 0), method="vitl", progress=False)
    with pytest.raises(VitalError, match="one weight per layer"):
        vital.visualize(tiny_model, vital.Class(1), _refs(0, 0), layers=["stem"], layer_weights=[1, 2],
                        progress=False)
