"""`vital circuit`: the upstream channels a neuron's relevance comes from, drawn and visualised too."""

from __future__ import annotations

import argparse
from pathlib import Path

from vital.cli.common import add_model, add_run, device
from vital.cli.options import check
from vital.errors import VitalError

NAME = "circuit"


def add(sub) -> None:
    ci = sub.add_parser(NAME, help="the upstream channels a neuron's relevance comes from, visualised too")
    add_model(ci)
    ci.add_argument("--layer", required=True, help="the target's layer")
    ci.add_argument("--channel", type=int, required=True, help="the target channel")
    ci.add_argument("--refs", required=True, help="a mining store with the target's and the upstream layers "
                                                  "(or a folder of images used for every channel)")
    ci.add_argument("-n", type=int, default=16, help="references per channel (default 16)")
    ci.add_argument("--depth", type=int, default=2, help="matched upstream layers, nearest first (default 2)")
    ci.add_argument("--top", type=int, default=4, help="channels per upstream layer (default 4)")
    ci.add_argument("--no-visualize", action="store_true", help="only compute and draw the circuit")
    add_run(ci)
    ci.set_defaults(func=run)


class _Refs:
    """References per channel: from the store's layer, or the one folder for every channel."""

    def __init__(self, a: argparse.Namespace, model):
        from vital.references.mining import MiningStore

        self.a = a
        self.store = MiningStore.load(a.refs) if (Path(a.refs) / "index.json").is_file() else None
        if self.store is not None:
            self.store.check(model, a.layer, a.channel)

    def __call__(self, layer: str, channel: int):
        from vital.references.images import from_folder

        a, store = self.a, self.store
        if store is None:
            return from_folder(a.refs, n=a.n, seed=a.seed or 0)
        if layer not in store.layers:
            raise VitalError(f"the store at {a.refs} has no layer '{layer}' to take references from; mine it too "
                             f"(vital mine {a.model} --layers {','.join([*store.layers, layer])} ...)")
        return store.references(layer, channel, "patches", a.n)


def run(a: argparse.Namespace) -> int:
    from vital.models import load_model
    from vital.outputs.claim import RunFolder
    from vital.targets import Channel
    from vital.validate import targets_fit

    options = check(a)
    with RunFolder(a.out, a.overwrite, kind=NAME) as folder:
        model = load_model(a.model, a.weights, device(a))
        targets_fit(model, [Channel(a.layer, a.channel)])
        refs_for = _Refs(a, model)
        folder.commit(lambda out: _write(a, model, refs_for, options, out, folder.path))
    print(f"circuit: {folder.path / 'circuit.json'}, {folder.path / 'circuit.svg'}")
    return 0


def _write(a: argparse.Namespace, model, refs_for: _Refs, options: dict, out: Path, final: Path) -> None:
    """The circuit's files into `out` (a temporary folder renamed to `final` once complete)."""
    from vital.circuit import circuit, svg
    from vital.run.execute import visualize
    from vital.targets import Channel, safe_name

    found = circuit(model, a.layer, a.channel, refs_for(a.layer, a.channel), options.get("layers"), a.depth, a.top,
                    options.get("relevance") or "lrp")
    print(f"circuit of {a.layer}:{a.channel} over {found.references} references ({found.relevance}):")
    for n in found.layers:
        print(f"  {n}: " + ", ".join(f"{s.channel} ({100 * s.share:.1f}%)" for s in found.sources[n]))
    found.save(out / "circuit.json")
    (out / "circuit.svg").write_text(svg(found.as_dict()), encoding="utf-8")
    if a.no_visualize:
        return
    groups = [(a.layer, [a.channel])] + [(n, [s.channel for s in found.sources[n]]) for n in found.layers]
    for layer, channels in groups:  # one batch per layer
        targets = [Channel(layer, c) for c in channels]
        result = visualize(model, targets, [refs_for(layer, c) for c in channels], method=a.method, **options)
        paths = result.save(out / safe_name(layer))
        for label, p in zip(result.labels, paths["images"], strict=True):
            print(f"{label}: {final / Path(p).relative_to(out)}")
