"""Units beyond a whole channel: a channel at one position, a direction (from a file, mined by its readout, with
relevance started from the readout), several diverse copies of a target; and `--refs` recognising a plain folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import vital
from vital.cli import main
from vital.errors import VitalError
from vital.layout import Layout
from vital.models import load_model
from vital.objectives.diversity import gram_similarity
from vital.references.mining import mine
from vital.references.refs_rule import ReferenceSpec
from vital.relevance import RelevanceEngine
from vital.relevance import readout as ro
from vital.relevance.modified_gradient import ModifiedGradientRelevance
from vital.targets import Channel, Direction, load_directions, parse_channels


@pytest.fixture
def net():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4))
    return load_model(seq, size=16, name="units")


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_parse_positions():
    assert parse_channels("layer4.2:5@3,4") == [Channel("layer4.2", 5, (3, 4))]
    assert str(Channel("a.b", 5, (3, 4))) == "a.b:5@3,4" and Channel("a.b", 5, (3, 4)).slug() == "a_b_ch0005_y3x4"
    with pytest.raises(VitalError, match="one channel before @"):
        parse_channels("l:1-3@0,0")
    with pytest.raises(VitalError, match="position @Y,X"):
        parse_channels("l:1@x")


def test_start_relevance_by_hand():
    a = torch.tensor([[[[1.0, -2.0]], [[3.0, 1.0]]]])  # (1, C=2, H=1, W=2)
    direction = ro.Readout(vectors=torch.tensor([[1.0, -1.0]]))
    # readout y = a0 - a1 = (-2, -3): nowhere positive, so no start relevance
    assert ro.start(a, direction, Layout.CHANNELS_FIRST, "lrp").abs().sum() == 0
    flipped = ro.Readout(vectors=torch.tensor([[-1.0, 1.0]]))
    # y = (2, 3) > 0; contributions -a0 = (-1, 2) and a1 = (3, 1), kept where positive
    want = torch.tensor([[[[0.0, 2.0]], [[3.0, 1.0]]]])
    assert torch.equal(ro.start(a, flipped, Layout.CHANNELS_FIRST, "lrp"), want)
    at = ro.Readout(vectors=torch.tensor([[-1.0, 1.0]]), positions=torch.tensor([[0, 1]]))
    assert torch.equal(ro.start(a, at, Layout.CHANNELS_FIRST, "lrp"), want * torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("engine", ["chain", "modified-gradient"])
def test_a_one_hot_direction_is_its_channel_and_a_position_stays_in_its_field(net, engine):
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        a = net.module[:4](x)[:, :, 1:15, 1:15]  # interior units
    c, y, w = (int(v) for v in torch.nonzero((a > 0).all(0))[0])  # one that both samples drive
    y, w = y + 1, w + 1
    onehot = torch.zeros(2, 5)
    onehot[:, c] = 1
    if engine == "chain":
        run = RelevanceEngine(net.module, "3", ["1"])
        get = lambda units: run(x, units)["1"]  # noqa: E731
    else:
        run = ModifiedGradientRelevance(net.module, "3", ["1"], "lrp")
        get = lambda units: run(x, units, lambda *a: None)["1"]  # noqa: E731
    torch.testing.assert_close(get(ro.Readout(vectors=onehot)), get(torch.tensor([c, c])))
    at = get(ro.Readout(channels=torch.tensor([c, c]), positions=torch.tensor([[y, w], [y, w]])))
    outside = at.clone()
    outside[:, :, y - 1:y + 2, w - 1:w + 2] = 0  # the 3x3 field of unit (y, w) of the second conv
    assert at.sum() > 0 and outside.abs().sum() == 0


def test_position_objective_reads_one_unit(net):
    """Fourier activation of channel 2 at (5, 6): its loss is minus that one activation of the final image."""
    from vital.objectives.activation import Activation
    from vital.objectives.base import Views

    term = Activation(net, [Channel("3", 2, (5, 6)), Channel("3", 1)])
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        a = net.module[:4](x)
    torch.testing.assert_close(term(Views.of(x)), torch.stack([-a[0, 2, 5, 6], -a[1, 1].mean()]))
    res = vital.visualize(net, Channel("3", 2, (5, 6)), None, method="fourier", steps=2, progress=False)
    assert tuple(res.record["targets"][0]["position"]) == (5, 6)
    with pytest.raises(VitalError, match="outside layer '3''s 16x16 map"):
        vital.visualize(net, Channel("3", 2, (16, 0)), None, method="fourier", steps=1, progress=False)


def test_directions_are_mined_by_their_readout_and_visualised_by_vital(net, photos, tmp_path):
    vectors = np.array([[1.0, 0, 0, 0, 0], [0.5, -0.5, 1.0, 0, 0]], dtype=np.float32)
    np.save(tmp_path / "dirs.npy", vectors)
    directions = load_directions(str(tmp_path / "dirs.npy"), "3")
    assert [d.name for d in directions] == ["dirs#0", "dirs#1"]
    store = mine(net, ["3"], photos, k=2, out=tmp_path / "store", progress=False, directions={"3": vectors})
    mined = store.tensors["3:directions"]
    # a one-hot direction is its channel: the same top images with the same scores
    assert torch.equal(mined["image_index"][0], store.tensors["3"]["image_index"][0])
    torch.testing.assert_close(mined["image_scores"][0], store.tensors["3"]["image_scores"][0])
    refs = ReferenceSpec("store", str(tmp_path / "store"), n=2).resolve(directions)
    assert refs[1].origin["layer"] == "3:directions" and refs[1].origin["channel"] == 1
    res = vital.visualize(net, directions, refs, steps=4, warmup=1, progress=False)
    assert torch.isfinite(res.history).all() and res.record["objective"]["terms"][1]["relevance"] == "lrp"
    with pytest.raises(VitalError, match="did not mine this direction"):
        ReferenceSpec("store", str(tmp_path / "store"), n=2).resolve([Direction("3", (0, 1.0, 0, 0, 0))])
    out = tmp_path / "cli"
    assert main(["neuron", "-m", "resnet18", "--weights", "none", "--direction", str(tmp_path / "dirs.npy"),
                 "--refs", str(photos), "-o", str(out), "--steps", "1"]) == 2  # no --layer: an error


def test_gram_similarity_by_hand():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(4, 3, 5))
    groups = torch.tensor([0, 0, 1, 1])
    got = gram_similarity(torch.from_numpy(f), groups).numpy()
    grams = [x @ x.T / 5 for x in f]
    cos = lambda a, b: (a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    assert np.allclose(got, [cos(grams[0], grams[1]), cos(grams[1], grams[0]), cos(grams[2], grams[3]),
                             cos(grams[3], grams[2])])


def test_copies_with_diversity_are_saved_apart_and_rerun(net, photos, tmp_path):
    from vital.outputs.record import RunRecord
    from vital.references.images import from_folder

    refs = from_folder(photos, n=3)
    res = vital.visualize(net, Channel("3", 1), refs, steps=3, warmup=1, copies=2, diversity=0.5, progress=False)
    assert res.images.shape[0] == 2 and not torch.equal(res.images[0], res.images[1])
    paths = res.save(tmp_path / "run")
    assert [p.name for p in paths["images"]] == ["3_ch0001_v0.png", "3_ch0001_v1.png"]
    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    assert len(rec["targets"]) == 1 and rec["options"]["copies"] == 2 and rec["options"]["diversity"] == 0.5
    assert any(t["name"] == "diversity" for t in rec["objective"]["terms"])
    again = vital.visualize(net, Channel("3", 1), from_folder(photos, n=3), progress=False,
                            **RunRecord.from_json(rec).run_arguments())
    assert torch.equal(again.images, res.images)  # the record's options give the same two images
    with pytest.raises(VitalError, match="copies >= 2"):
        vital.visualize(net, Channel("3", 1), refs, steps=1, diversity=0.5, progress=False)


def test_refs_recognise_a_plain_folder(photos, tmp_path):
    assert ReferenceSpec.flag_fields(str(photos))["source"] == "folder"
    classes = tmp_path / "classes"
    (classes / "a").mkdir(parents=True)
    assert ReferenceSpec.flag_fields(str(classes))["source"] == "class-folder"
    (classes / "loose.png").write_bytes((photos / "0.png").read_bytes())
    with pytest.raises(VitalError, match="holds both images and sub-folders"):
        ReferenceSpec.flag_fields(str(classes))
    assert ReferenceSpec.flag_fields(str(classes), flat=True)["source"] == "folder"
