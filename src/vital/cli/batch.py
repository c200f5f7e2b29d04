"""`vital batch`: a job file (TOML) and/or flags; flags override the file. The whole job (model, weights, layers,
channel ranges, references) is checked before the output folder is touched, and the folder is locked like a run's."""

from __future__ import annotations

import argparse
from typing import Any

from vital.cli.options import add_option_flags, given
from vital.errors import VitalError
from vital.references.refs_rule import ReferenceSpec

NAME = "batch"
TOP_LEVEL = frozenset({"steps", "setting", "seed"})  # job-level keys; every other option goes to [options]


def add(sub) -> argparse.ArgumentParser:
    """Register `vital batch` on the sub-parsers of the main command line."""
    p = sub.add_parser(NAME, help="many targets (or a large mining pass): batched, resumable, optionally on Ray",
                       description="Run every target of a job in memory-sized batches, resumably, into --out; "
                                   "or mine an image folder in shards (--mine). Flags override the job file.")
    p.add_argument("job", nargs="?", help="job file (TOML): model, targets, method, [references], [options], "
                                          "[speed] or [mine]")
    p.add_argument("--model", "-m", default=None, help="model name (resnet50, efficientnet_lite0, timm:NAME, ...)")
    p.add_argument("--factory", default=None, help="package.module:function returning the model (instead of --model)")
    p.add_argument("--allow-factory", action="store_true",
                   help="let the job file name a model factory: it imports and runs that code, so only for files "
                        "you trust")
    p.add_argument("--weights", default=None, help="'default' (pretrained, from disk), 'none' or a file")
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    t = p.add_argument_group("targets")
    t.add_argument("--classes", default=None, help="class indices, e.g. 0-999 or 1,5,10-12")
    t.add_argument("--layer", default=None, help="layer of the channels, e.g. layer4.2")
    t.add_argument("--channels", default=None, help="channel indices of --layer, e.g. 0-2047")
    r = p.add_argument_group("references")
    r.add_argument("--refs", default=None, help="offline | a mining store | a class folder | a folder (--refs-flat)")
    r.add_argument("--refs-flat", action="store_true", help="--refs is one folder shared by every target")
    r.add_argument("--ref-kind", default=None, choices=("images", "patches"), help="from a mining store")
    r.add_argument("-n", type=int, default=None, help="references per target (default 50)")
    o = p.add_argument_group("the job's loop")
    o.add_argument("--steps", type=int, default=None)
    o.add_argument("--setting", type=int, default=None, choices=(0, 1, 2))
    o.add_argument("--seed", type=int, default=None)
    add_option_flags(p, method_default=None, skip=TOP_LEVEL)
    s = p.add_argument_group("speed")
    s.add_argument("--batch-size", type=int, default=None, help="targets per batch (default: sized to the device)")
    s.add_argument("--channels-last", action="store_true", default=None, help="channels-last memory layout")
    s.add_argument("--autocast", default=None, choices=("bf16", "fp16"), help="mixed precision")
    s.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    m = p.add_argument_group("mining")
    m.add_argument("--mine", default=None, help="layers to mine (comma-separated): makes this a mining job")
    m.add_argument("--images", default=None, help="image folder to mine")
    m.add_argument("-k", type=int, default=None, help="top patches per channel (default 50)")
    m.add_argument("--n-images", type=int, default=None, help="top images per channel (default: k)")
    m.add_argument("--shards", type=int, default=None, help="parts mined in parallel and merged (default 1)")
    p.add_argument("--ray", default=None, metavar="auto|local|ADDRESS",
                   help="run batches as Ray tasks: auto (the cluster of `ray start`), local, or an address")
    p.add_argument("--retries", type=int, default=3, help="Ray: retries of a task whose worker died")
    p.add_argument("--out", "-o", required=True, help="output folder (resumed if it holds the same job)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _set(d: dict, key: str, value: Any) -> None:
    if value is not None:
        d[key] = value


def job_dict(a: argparse.Namespace) -> dict[str, Any]:
    """The job file's table with the flags laid over it."""
    from vital.jobs.spec import read_job_file

    d: dict[str, Any] = read_job_file(a.job) if a.job else {}
    if d.get("factory") is not None and a.factory is None and not a.allow_factory:
        raise VitalError(f"job file {a.job} names a model factory ({d['factory']!r}): running it imports and calls "
                         "code from your Python path; pass --allow-factory if you trust this file")
    for key in ("model", "factory", "weights", "device", "method", "steps", "setting", "seed", "batch_size"):
        _set(d, key, getattr(a, key))
    if a.mine is not None or "mine" in d:
        mine = d.setdefault("mine", {})
        for key, value in (("layers", a.mine), ("images", a.images), ("k", a.k), ("n_images", a.n_images),
                           ("shards", a.shards), ("batch_size", a.batch_size)):
            _set(mine, key, value)
        d.pop("batch_size", None)
        return d
    if a.classes or a.channels or a.layer:
        d["targets"] = {k: v for k, v in (("classes", a.classes), ("layer", a.layer), ("channels", a.channels)) if v}
    refs = d.setdefault("references", {})
    if a.refs is not None:
        refs.update(ReferenceSpec.flag_fields(a.refs, a.refs_flat, "classes" in d.get("targets", {})))
    _set(refs, "kind", a.ref_kind)
    _set(refs, "n", a.n)
    d.setdefault("options", {}).update(given(a, skip=TOP_LEVEL))
    speed = d.setdefault("speed", {})
    for key in ("channels_last", "autocast", "compile"):
        _set(speed, key, getattr(a, key))
    return d


def run(a: argparse.Namespace) -> int:
    from vital.jobs.spec import Job, job_from_dict, preflight
    from vital.outputs.claim import FolderLock

    if a.retries < 0:
        raise VitalError(f"--retries must be at least 0, got {a.retries}")
    job = job_from_dict(job_dict(a))
    preflight(job)  # before the output folder exists: a bad job writes nothing
    with FolderLock(a.out):  # one writer per folder, as for runs: a second identical batch is refused
        if isinstance(job, Job):
            from vital.jobs.runner import run_job, summary_lines

            summary = run_job(job, a.out, ray=a.ray, retries=a.retries, progress=not a.quiet)
            print("\n".join(summary_lines(summary, a.out)))
            return 0 if not summary["failed"] else 1
        from vital.jobs.mining_job import run_mining

        store, summary = run_mining(job, a.out, ray=a.ray, retries=a.retries, progress=not a.quiet)
    print(f"mined {summary['images']} images in {summary['shards']} shard(s) ({summary['shards_run']} run now) in "
          f"{summary['seconds']:.1f}s: store {store.path} (layers {', '.join(store.layers)})")
    return 0
