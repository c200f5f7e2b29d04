"""The atlas's faithfulness (`vital atlas --faithfulness`): the path similarity of every visualised neuron
(`vital.metrics.faithful_runs`), computed once per run folder and kept in the atlas manifest, keyed by the files
it came from, so that a rebuild recomputes only the runs that changed."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vital.outputs.record import RECORD


def _signature(run: Path, images: list[Path]) -> list:
    files = [run / RECORD, *sorted(images)]
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]


def neuron_paths(neurons: Iterable[Any], cached: dict[str, Any], model: Any = None, progress: bool = False
                 ) -> dict[str, Any]:
    """{run folder: {"signature": ..., "paths": {"layer:channel": path dict}}} for the runs of `neurons` (atlas
    `Neuron`s with a visualization); entries of `cached` whose files did not change are kept as they are."""
    from vital.metrics.faithful_runs import natural_pool, score_runs

    runs: dict[Path, list[Path]] = {}
    for n in neurons:
        if n.run is not None and n.image is not None:
            runs.setdefault(Path(n.run), []).append(Path(n.image))
    out: dict[str, Any] = {}
    pool = None
    for run, images in runs.items():
        signature = _signature(run, images)
        old = cached.get(str(run)) if isinstance(cached, dict) else None
        if isinstance(old, dict) and old.get("signature") == signature:
            out[str(run)] = old
            continue
        pool = pool if pool is not None else natural_pool()
        scored = score_runs([run], model, "cpu" if model is None else model.device, pool, progress)
        paths = {s.path.target: s.path.as_dict() for s in scored if s.kind == "channel"}
        out[str(run)] = {"signature": signature, "paths": paths}
    return out


def by_neuron(entries: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{"layer:channel": path dict} over every run entry of `neuron_paths`."""
    return {key: path for entry in entries.values() for key, path in entry["paths"].items()}


def layer_mean(paths: dict[str, dict[str, Any]], layer: str) -> tuple[float | None, int]:
    """The mean summary of a layer's neurons that have one, and how many they are."""
    values = [p["summary"] for key, p in paths.items() if key.rpartition(":")[0] == layer and p["summary"] is not None]
    return (sum(values) / len(values) if values else None), len(values)
