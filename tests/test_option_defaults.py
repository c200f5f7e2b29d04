"""A method option's default is declared once, by the method (`OptionHistory`); the command line's help, the
`VitalOptions` table of the documentation and the record of a run made with the defaults all agree with it."""

from __future__ import annotations

import argparse
from dataclasses import fields

import numpy as np
import pytest
from PIL import Image

import vital
from vital.cli.options import add_option_flags
from vital.methods import METHODS, option_defaults
from vital.methods.history import GROUPS, shown
from vital.methods.vital import VitalOptions
from vital.references.images import from_images


def _help() -> dict[str, str]:
    p = argparse.ArgumentParser()
    add_option_flags(p)
    return {a.dest: a.help or "" for a in p._actions}


def _table() -> dict[str, dict[str, str]]:
    """The rows of the `VitalOptions` docstring's table: {option: {"class": cell, "channel": cell}}."""
    rows = [line.strip().strip("|").split("|") for line in (VitalOptions.__doc__ or "").splitlines()
            if line.strip().startswith("|") and "---" not in line]
    return {r[0].strip(): {"class": r[1].strip(), "channel": r[2].strip()} for r in rows[1:]}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_help_states_each_declared_default(method):
    help_of = _help()
    for group, defaults in option_defaults(method).items():
        for name, value in defaults.items():
            assert f"default {shown(value)}" in help_of[name] or (
                f"{'classes' if group == 'class' else 'channels'} {shown(value)}" in help_of[name]), (name, group)


def test_the_vital_options_table_agrees_with_the_declared_defaults():
    table = _table()
    assert set(table) == {f.name for f in fields(VitalOptions)}
    declared = option_defaults("vital")
    for name, cells in table.items():
        for group in GROUPS:
            if name in declared[group]:
                assert cells[group] == shown(declared[group][name]), (name, group)
            elif cells[group] == "-":  # refused for that kind of target: the method declares nothing for it
                assert group == "class"


def _refs(seed: int):
    rng = np.random.default_rng(seed)
    return from_images([Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(3)],
                       source="noise")


@pytest.mark.parametrize("target", [vital.Class(2), vital.Channel("stage2", 3)], ids=["class", "channel"])
def test_a_run_with_the_defaults_records_them(tiny_model, target):
    """The recipe records what each unset option resolved to: exactly the declared default."""
    group = "class" if isinstance(target, vital.Class) else "channel"
    res = vital.visualize(tiny_model, target, _refs(0), steps=1, progress=False)
    history = METHODS["vital"].history
    assert history.defaults[group]  # every kind of target has kind-dependent defaults to check
    for name, value in history.defaults[group].items():
        assert res.run.recipe[name] == value, name
    for name, value in option_defaults("vital")[group].items():
        if name not in history.defaults[group]:  # a field's own default: recorded among the options
            assert res.run.options[name] == value, name


def test_a_changed_default_is_pinned_for_an_old_record():
    """A record that predates a change and left the option unset reruns with the value from before."""
    history = METHODS["vital"].history
    for group, before in history.changed.items():
        kinds = ["class"] if group == "class" else ["channel"]
        pinned = history.pin(kinds, {name: None for name in before}, recipe={})
        assert pinned == before
        assert history.pin(kinds, {name: None for name in before}, recipe={n: "ran" for n in before}) == {
            n: "ran" for n in before}
