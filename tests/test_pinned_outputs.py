"""Bit-identical outputs across restructurings: every relevance backend, the activation objective's readouts and
short VITAL runs give the same bytes as the code before the relevance / readout / capture restructuring did
(tests/fixtures/house_pins.json, written at commit b26d5fe by tests/fixtures/make_house_pins.py). The digests are
of this project's CPU runs (float rounding differs between CPU kinds): regenerate them with the generator on another
machine, from a commit known to be right, before relying on them there."""

import json
import warnings
from pathlib import Path

import pytest
from pinned_cases import CASES, digest

PINS = json.loads((Path(__file__).parent / "fixtures" / "house_pins.json").read_text())


@pytest.fixture
def announcements_kept():
    """The modified-gradient choice is announced once per model type and reason: these runs, which ignore the
    warnings, must not use up an announcement that another test expects."""
    from vital.relevance import choice as backend

    before = set(backend._ANNOUNCED)
    yield
    backend._ANNOUNCED.intersection_update(before)


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_are_bit_identical_to_the_pinned_ones(case, announcements_kept):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = {k: digest(v) for k, v in CASES[case]().items()}
    assert sorted(got) == sorted(PINS[case])
    for key, want in PINS[case].items():
        assert got[key]["shape"] == want["shape"], key
        assert got[key]["sha256"] == want["sha256"], f"{key}: sum {got[key]['sum']!r}, pinned {want['sum']!r}"
