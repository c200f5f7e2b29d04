"""The layer judges of bench/layer_judges.py against explicit computations: the depth rule, texture statistics,
features read at a block of a tiny model, and the exact hit probability of retrieval among random candidates."""

import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
from layer_judges import (  # noqa: E402
    JudgeSpec,
    chance,
    hit_probability,
    judge_features,
    judge_for,
    medoid,
    pooled,
    retrieval,
    shuffled_retrieval,
    texture_statistics,
)


def test_rule_maps_relative_depth_and_picks_statistics_by_depth():
    specs = [judge_for("efficientnet_lite0", f"_blocks.{i}", 16, 21) for i in (4, 7, 12)]
    assert [(s.network, s.block, s.kind) for s in specs] == [
        ("efficientnet_lite2", "_blocks.5", "texture"), ("efficientnet_lite2", "_blocks.9", "texture"),
        ("efficientnet_lite2", "_blocks.16", "pooled")]
    assert judge_for("efficientnet_lite2", "_blocks.10", 21, 16) == JudgeSpec("efficientnet_lite0", "_blocks.8",
                                                                             "texture")


def test_texture_statistics_match_an_explicit_gram_and_mean():
    rng = np.random.default_rng(0)
    fmap = rng.random((2, 3, 4, 5))
    f = texture_statistics(fmap)
    x = fmap[1].reshape(3, -1)
    means = x.mean(1)
    gram = [float(x[i] @ x[j]) / 20 for i in range(3) for j in range(i, 3)]
    expected = np.concatenate([means / np.linalg.norm(means), gram / np.linalg.norm(gram)]) / np.sqrt(2)
    assert np.allclose(f[1], expected)
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    m0, m1 = fmap[0].reshape(3, -1).mean(1), means
    g0 = (fmap[0].reshape(3, -1) @ fmap[0].reshape(3, -1).T / 20)[np.triu_indices(3)]
    assert np.isclose(f[0] @ f[1], (cos(m0, m1) + cos(g0, np.array(gram))) / 2)
    assert np.allclose(pooled(fmap)[0], m0 / np.linalg.norm(m0))


def test_judge_features_read_the_named_block(tiny_model):
    images = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    grabbed = []
    block = dict(tiny_model.module.named_modules())["stage1"]
    hook = block.register_forward_hook(lambda _m, _i, o: grabbed.append(o.detach()))
    from vital.metrics.classify import preprocess

    with torch.no_grad():
        tiny_model(torch.stack([preprocess(tiny_model, im) for im in images]))
    hook.remove()
    expected = texture_statistics(grabbed[0].double().numpy())
    got = judge_features(tiny_model, JudgeSpec("tiny", "stage1", "texture"), images, batch_size=2)
    assert np.allclose(got, expected, atol=1e-5)
    assert np.allclose(judge_features(tiny_model, JudgeSpec("tiny", "stage1", "pooled"), images),
                       pooled(grabbed[0].double().numpy()), atol=1e-5)


def test_hit_probability_equals_enumerating_every_candidate_draw():
    rng = np.random.default_rng(1)
    scores = rng.random((4, 7))
    own = np.array([0, 3, 6, 2])
    for m in (1, 3, 5, 7, 16):
        got = hit_probability(scores, own, m)
        for i, o in enumerate(own):
            others = [j for j in range(7) if j != o]
            draws = list(combinations(others, min(m, 7) - 1))
            hits = [all(scores[i, j] <= scores[i, o] for j in d) for d in draws]
            assert np.isclose(got[i], np.mean(hits))
    assert chance(7, 16) == 1 / 7 and chance(40) == 1 / 16


def test_retrieval_scores_sets_by_mean_cosine():
    rng = np.random.default_rng(2)
    sets = [rng.normal(size=(5, 6)) + 3 * rng.normal(size=6) for _ in range(6)]
    images = np.stack([s[0] + 0.1 * rng.normal(size=6) for s in sets])
    got = retrieval(images, sets, candidates=3)
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    for i in range(6):
        scores = np.array([(unit(s) @ unit(images[i])).mean() for s in sets])
        beaten = int((np.delete(scores, i) <= scores[i]).sum())
        assert np.isclose(got[i], beaten * (beaten - 1) / (5 * 4))
    assert got.mean() > 1 / 3  # images drawn from their own sets find them


def test_shuffled_row_is_chance_for_two_sets():
    # two sets: the shuffled row always scores the other set, so it hits exactly when the other set scores higher
    sets = [np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])]
    images = np.array([[1.0, 0.2], [0.1, 1.0]])
    assert np.allclose(shuffled_retrieval(images, sets, candidates=16, draws=5), [0.0, 0.0])
    assert np.allclose(retrieval(images, sets), [1.0, 1.0])


def test_medoid_is_the_member_closest_on_average_to_the_others():
    feats = np.random.default_rng(4).normal(size=(6, 4))
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    mean_to_others = [np.mean([cos(feats[i], feats[j]) for j in range(6) if j != i]) for i in range(6)]
    assert np.allclose(medoid(feats), feats[int(np.argmax(mean_to_others))])
    assert np.allclose(medoid(3 * feats), 3 * feats[int(np.argmax(mean_to_others))])
