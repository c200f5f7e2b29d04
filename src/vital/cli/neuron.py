"""`vital neuron`: visualise channels, units or directions of layers (several run as one batch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vital.cli.common import add_model, add_run, device, once, print_outputs, refs
from vital.cli.options import check
from vital.errors import VitalError

NAME = "neuron"


def add(sub) -> None:
    ne = sub.add_parser(NAME, help="visualise channels of layers (several --channel values run as one batch)")
    add_model(ne)
    ne.add_argument("--channel", "-c", dest="channels", action="append", default=[],
                    help="LAYER:CHANNELS (e.g. _blocks.10:5 or layer4.2:0-3,7), one unit LAYER:C@Y,X, or channels of "
                         "--layer (an index, list or range); repeatable")
    ne.add_argument("--direction", default=None, help="a .npy or .pt file of one direction (C,) or several (K, C) "
                                                      "in the channel space of --layer, instead of --channel")
    ne.add_argument("--layer", "-l", default=None, help="dotted layer name of bare --channel values (see `vital "
                                                        "layers MODEL`)")
    ne.add_argument("--refs", required=True, help="a store written by `vital mine`, or a folder of the neuron's "
                                                  "top images")
    ne.add_argument("--ref-kind", default=None, choices=("images", "patches"),
                    help="from a store: the top patches, cropped and resized (the paper; default) or whole images")
    ne.add_argument("-n", type=int, default=50, help="references per channel (default 50)")
    add_run(ne)
    ne.set_defaults(func=run)


def targets_of(a: argparse.Namespace) -> list:
    """The channels of --channel, or the directions of --direction in --layer."""
    from vital.targets import load_directions, parse_channels

    if a.direction is not None:
        if not a.layer:
            raise VitalError("--direction FILE needs --layer: the layer whose channel space the vectors are in")
        if a.channels:
            raise VitalError("give either --channel or --direction, not both")
        return load_directions(a.direction, a.layer)
    if not a.channels:
        raise VitalError("give --channel LAYER:C (or --direction FILE with --layer)")
    return once([t for spec in a.channels for t in parse_channels(spec, a.layer)], "channel")


def check_targets(model, targets: list, refs_path: str) -> None:
    """Every target against the model (layer, channel range, a direction's size), and a store mined for another
    model or layer, refused before any reference is read."""
    from vital.references.mining import MiningStore
    from vital.validate import targets_fit

    targets_fit(model, targets)
    if (Path(refs_path) / "index.json").is_file():
        store = MiningStore.load(refs_path)
        for t in targets:
            store.check(model, t.layer, getattr(t, "channel", None))


def run(a: argparse.Namespace) -> int:
    from vital.models import load_model
    from vital.outputs.claim import RunFolder
    from vital.run.execute import visualize

    targets = targets_of(a)
    options = check(a)
    with RunFolder(a.out, a.overwrite):
        model = load_model(a.model, a.weights, device(a))
        check_targets(model, targets, a.refs)
        result = visualize(model, targets, refs(a, targets, classes=False), method=a.method, **options)
        print_outputs(result, result.save(a.out, overwrite=a.overwrite))
    return 0
