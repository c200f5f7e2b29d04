"""Outputs that a restructuring must not change: every relevance backend, the activation objective's readouts and
short VITAL runs agree with the pins (tests/fixtures/house_pins.npz) within the rounding of any CPU (tests/pins.py
says how the tolerances were derived). A wrong program fails them: a one-step-longer run, another relevance rule and
another readout are shown to fail here."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pinned_cases import CASES, IMAGE_CASES, _refs, _resnet, _x
from pins import (
    IMAGE_SHARE,
    TENSOR_RTOL,
    image_differences,
    load_pins,
    mismatches,
    pin_parts,
    tensor_difference,
    tensor_summary,
    to_levels,
)

import vital
from vital.relevance import RelevanceEngine

PINS = load_pins(Path(__file__).parent / "fixtures" / "house_pins.npz")


@pytest.fixture
def announcements_kept():
    """The modified-gradient choice is announced once per model type and reason: these runs, which ignore the
    warnings, must not use up an announcement that another test expects."""
    from vital.relevance import choice as backend

    before = set(backend._ANNOUNCED)
    yield
    backend._ANNOUNCED.intersection_update(before)


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_agree_with_the_pins_within_rounding(case, announcements_kept):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = pin_parts(CASES[case](), case in IMAGE_CASES)
    assert not mismatches(got, PINS[case]), mismatches(got, PINS[case])


def test_a_one_step_longer_run_fails_the_image_pin():
    """vital_runs' direction case, run for 4 steps instead of 3: most pixels move beyond the tolerance."""
    direction = vital.Direction("layer2.1", [float(i % 7) - 3 for i in range(128)])
    longer = vital.visualize(_resnet(), direction, _refs(), steps=4, warmup=1, jitter=2, activation=0.0,
                             progress=False).images
    worst, share = image_differences(to_levels(longer), PINS["vital_runs"]["direction"]["levels"])
    assert share > 100 * IMAGE_SHARE, (worst, share)  # 8 levels at most, but on a third of the values


def test_another_relevance_rule_fails_the_tensor_pin():
    """relevance_chain's lrp maps computed with the restricted rules instead: far outside TENSOR_RTOL."""
    m = _resnet().module
    got = RelevanceEngine(m, "layer3", ["layer2", "layer1", "conv1"], "lrp-restricted")(_x((2, 3, 48, 48)),
                                                                                    torch.tensor([3, 9]))
    for key in ("layer1", "conv1"):
        err = tensor_difference(tensor_summary(got[key]), PINS["relevance_chain"][f"lrp/{key}"])
        assert err > 100 * TENSOR_RTOL, (key, err)


def test_a_small_change_to_a_readout_fails_the_tensor_pin():
    """The activation readouts shifted by one part in a thousand (a changed epsilon, a mean over one more
    position) fail; the pinned values themselves pass."""
    pinned = PINS["activation_objectives"]["channel"]
    exact = {"sample": pinned["sample"], "shape": pinned["shape"]}
    assert tensor_difference(exact, pinned) == 0.0
    nudged = {"sample": pinned["sample"] * (1 + 1e-3), "shape": pinned["shape"]}
    assert tensor_difference(nudged, pinned) > TENSOR_RTOL


def test_the_tolerances_accept_rounding_and_nothing_more():
    """An image one level off everywhere passes (truncation of a value that rounding moved); a block of 3% of the
    pixels changed by 10 levels fails, as does one pixel 40 levels off."""
    rng = np.random.default_rng(0)
    img = rng.integers(10, 240, (48, 48, 3), dtype=np.uint8)
    assert not mismatches({"a": {"levels": img + 1}}, {"a": {"levels": img}})
    block = img.copy()
    block[:12, :12] += 10
    assert mismatches({"a": {"levels": block}}, {"a": {"levels": img}})
    spot = img.copy()
    spot[5, 5, 0] += 40
    assert mismatches({"a": {"levels": spot}}, {"a": {"levels": img}})
