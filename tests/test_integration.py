"""The real offline efficientnet_lite0 and real photos, at low resolution and few steps."""

import dataclasses

import pytest
import torch

import vital
from vital.demo import run_demo
from vital.features import FeatureExtractor
from vital.objectives.sort_matching import quantile_prototype, sort_matching_loss
from vital.references.photos import photo_references

pytestmark = pytest.mark.integration


def test_lite0_loss_falls_and_quantiles_move_toward_references(lite0):
    small = dataclasses.replace(lite0, size=96, resize=110)
    refs = photo_references(967, n=8)
    res = vital.visualize(small, vital.Class(967), refs, steps=40, warmup=5, jitter=4, progress=False)
    assert res.history[-5:].mean() < 0.5 * res.history[:5].mean()
    layers = res.record["objective"]["terms"][1]["layers"]
    fx = FeatureExtractor(small.module, layers)
    with torch.no_grad():
        q = {n: quantile_prototype(f) for n, f in fx(refs.load(small.transform())).items()}
        start = fx(torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0)))
        end = fx(small.normalize(res.images))
    for n in layers:  # every matched layer's distribution moved toward the references' barycenter
        assert sort_matching_loss(end[n], q[n]) < 0.7 * sort_matching_loss(start[n], q[n]), n


def test_demo_writes_images_and_sheet(tmp_path, capsys):
    out = run_demo(tmp_path / "demo", steps=2, progress=False)
    assert (out / "class" / "class0282.png").is_file() and (out / "class" / "class0967.png").is_file()
    assert (out / "class" / "contact_sheet.png").is_file() and (out / "class" / "record.json").is_file()
    assert (out / "neuron" / "record.json").is_file() and (out / "store" / "index.json").is_file()
    printed = capsys.readouterr().out
    assert "contact sheet:" in printed and "espresso" in printed and "_blocks.7:" in printed
    assert "the median of its 12 reference patches'" in printed and (out / "store" / "grid__blocks.7.png").is_file()
    assert len(list((out / "corpus").glob("*.png"))) > 400  # crops of every offline photo
