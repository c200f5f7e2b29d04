"""Command line: vital class | neuron | mine | compare | eval | report | rerun | batch | demo | models | layers.

Every user error (a `VitalError`) is printed as one line starting with "error:" and exits with status 2."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from vital.errors import VitalError
from vital.models.zoo import resolve_device
from vital.targets import parse_names


def _floats(s: str) -> list[float]:
    try:
        return [float(v) for v in s.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{s}'") from e


def _add_model(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--model", "-m", default=default, required=default is None,
                   help="model name (efficientnet_lite0, resnet50, vit_l_16, timm:NAME, ...)")
    p.add_argument("--weights", default="default",
                   help="'default' (pretrained, from disk), 'none' (random), a torchvision weights name, or a file")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available, else cpu)")


def _add_run(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation")
    g.add_argument("--method", default="vital", help="vital (default), maco, fourier, pixel, deepinversion")
    g.add_argument("--steps", type=int, default=None, help="iterations (default per setting: 2000; setting 2: 20000)")
    g.add_argument("--setting", type=int, default=1, choices=(0, 1, 2),
                   help="0: 112px then 224px stages, 1: one 224px stage (default), 2: long run, other Adam betas")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--layers", type=parse_names, default=None, help="matched layers, comma-separated (default: preset)")
    g.add_argument("--layer-weights", type=_floats, default=None, help="one weight per matched layer")
    g.add_argument("--tv-l2", type=float, default=None)
    g.add_argument("--tv-l1", type=float, default=None)
    g.add_argument("--l2", type=float, default=None)
    g.add_argument("--jitter", type=int, default=None, help="max circular shift in px (VITAL default 30)")
    g.add_argument("--flip", action="store_true", default=None, help="random horizontal flips")
    g.add_argument("--lr", type=float, default=None, help="Adam learning rate (VITAL default 1.0)")
    g.add_argument("--warmup", type=int, default=None, help="warmup steps (default 100)")
    g.add_argument("--copies", type=int, default=1, help="images per target, optimised together (default 1)")
    g.add_argument("--diversity", type=float, default=0.0,
                   help="weight of the diversity term among a target's copies (lucent's; e.g. 0.5 with --copies 3)")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _checked(a: argparse.Namespace, **method_options) -> None:
    """Every number and choice of the run, checked before any model or reference is loaded."""
    from vital.methods import RunOptions, split_options

    run, _ = split_options(a.method, {**_run_options(a), **method_options})
    RunOptions(**run)


def _run_options(a: argparse.Namespace) -> dict:
    return dict(steps=a.steps, setting=a.setting, seed=a.seed, layers=a.layers, layer_weights=a.layer_weights,
                tv_l2=a.tv_l2, tv_l1=a.tv_l1, l2=a.l2, jitter=a.jitter, flip=a.flip, lr=a.lr, warmup=a.warmup,
                copies=a.copies, diversity=a.diversity, progress=not a.quiet)


def cmd_class(a: argparse.Namespace) -> int:
    from vital.models import load_model
    from vital.outputs import RunFolder
    from vital.targets import Class, parse_range
    from vital.visualize import visualize

    classes = _once([k for spec in a.classes for k in parse_range(spec)], "class")
    _checked(a)
    with RunFolder(a.out, a.overwrite):  # claimed for the whole run: checked before any long computation
        model = load_model(a.model, a.weights, resolve_device(a.device))
        targets = [Class(k) for k in classes]
        result = visualize(model, targets, _refs(a, targets, classes=True), method=a.method, **_run_options(a))
        _print_outputs(result, result.save(a.out, overwrite=a.overwrite))
    return 0


def _refs(a: argparse.Namespace, targets: list, classes: bool) -> list:
    """One reference set per target, by the shared --refs rule (vital.references.spec)."""
    from vital.references.spec import ReferenceSpec

    kind = getattr(a, "ref_kind", None)
    spec = ReferenceSpec.from_flag(a.refs, getattr(a, "refs_flat", False), classes, a.n, kind or "patches")
    if kind is not None and spec.source != "store":
        raise VitalError(f"--ref-kind {kind} picks a mining store's top images or patches, but --refs {a.refs} is a "
                         f"{spec.source}; drop --ref-kind or pass a store made by vital mine")
    return spec.resolve(targets, seed=getattr(a, "seed", 0))


def _once(targets: list, what: str) -> list:
    """Targets in order without repeats; a repeat is said in one line (it would be optimised twice and one file
    would overwrite the other)."""
    unique = list(dict.fromkeys(targets))
    if len(unique) < len(targets):
        twice = sorted(str(t) for t, c in Counter(targets).items() if c > 1)
        warnings.warn(f"{what} {', '.join(twice[:5])} given more than once: visualised once", stacklevel=2)
    return unique


def cmd_neuron(a: argparse.Namespace) -> int:
    from vital.models import load_model
    from vital.outputs import RunFolder
    from vital.references.mining import MiningStore
    from vital.targets import parse_channels
    from vital.visualize import visualize

    if a.direction is not None:
        from vital.targets import load_directions

        if not a.layer:
            raise VitalError("--direction FILE needs --layer: the layer whose channel space the vectors are in")
        if a.channels:
            raise VitalError("give either --channel or --direction, not both")
        targets: list = load_directions(a.direction, a.layer)
    elif not a.channels:
        raise VitalError("give --channel LAYER:C (or --direction FILE with --layer)")
    else:
        targets = _once([t for spec in a.channels for t in parse_channels(spec, a.layer)], "channel")
    _checked(a, relevance=a.relevance, mask=a.mask, target_weight=a.target_weight, unweighted=a.unweighted,
             param=a.param)
    with RunFolder(a.out, a.overwrite):
        model = load_model(a.model, a.weights, resolve_device(a.device))
        if (Path(a.refs) / "index.json").is_file():  # a store mined for another model or layer is refused first
            store = MiningStore.load(a.refs)
            for t in targets:
                store.check(model, t.layer, getattr(t, "channel", None))
        result = visualize(model, targets, _refs(a, targets, classes=False), method=a.method,
                           relevance=a.relevance, mask=a.mask, target_weight=a.target_weight,
                           unweighted=a.unweighted, param=a.param, **_run_options(a))
        _print_outputs(result, result.save(a.out, overwrite=a.overwrite))
    return 0


def cmd_circuit(a: argparse.Namespace) -> int:
    from vital.circuit import circuit, svg
    from vital.io import ensure_writable
    from vital.models import load_model
    from vital.references.images import from_folder
    from vital.references.mining import MiningStore
    from vital.targets import Channel, safe_name
    from vital.visualize import visualize

    _checked(a, relevance=a.relevance)
    out = ensure_writable(a.out)
    model = load_model(a.model, a.weights, resolve_device(a.device))
    store = MiningStore.load(a.refs) if (Path(a.refs) / "index.json").is_file() else None
    if store is not None:
        store.check(model, a.layer, a.channel)

    def refs_for(layer: str, channel: int):
        if store is None:
            return from_folder(a.refs, n=a.n, seed=a.seed)
        if layer not in store.layers:
            raise VitalError(f"the store at {a.refs} has no layer '{layer}' to take references from; mine it too "
                             f"(vital mine {a.model} --layers {','.join([*store.layers, layer])} ...)")
        return store.references(layer, channel, "patches", a.n)

    found = circuit(model, a.layer, a.channel, refs_for(a.layer, a.channel), a.layers, a.depth, a.top,
                    a.relevance or "lrp")
    data = found.as_dict()
    print(f"circuit of {a.layer}:{a.channel} over {found.references} references ({found.relevance}):")
    for n in found.layers:
        print(f"  {n}: " + ", ".join(f"{s.channel} ({100 * s.share:.1f}%)" for s in found.sources[n]))
    found.save(out / "circuit.json")
    (out / "circuit.svg").write_text(svg(data), encoding="utf-8")
    if a.no_visualize:
        return 0
    groups = [(a.layer, [a.channel])] + [(n, [s.channel for s in found.sources[n]]) for n in found.layers]
    for layer, channels in groups:  # one batch per layer
        targets = [Channel(layer, c) for c in channels]
        result = visualize(model, targets, [refs_for(layer, c) for c in channels], method=a.method,
                           relevance=a.relevance, **_run_options(a))
        paths = result.save(out / safe_name(layer), overwrite=a.overwrite)
        for label, p in zip(result.labels, paths["images"], strict=True):
            print(f"{label}: {p}")
    print(f"circuit: {out / 'circuit.json'}, {out / 'circuit.svg'}")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from vital.compare import compare
    from vital.models import load_model
    from vital.targets import Class, parse_range

    classes = parse_range(a.classes)
    model = load_model(a.model, a.weights, resolve_device(a.device))
    refs = dict(zip(classes, _refs(a, [Class(k) for k in classes], classes=True), strict=True))
    result = compare(model, classes, refs, methods=parse_names(a.methods), out=a.out, judges=parse_names(a.judges),
                     fid=not a.no_fid, clip_weights=a.clip_weights, overwrite=a.overwrite, **_run_options(a))
    print(result.table.to_markdown())
    print(f"table: {result.out / 'table.md'} (.csv, .json); embedding: {result.out / 'embedding.png'}")
    print(f"gallery: {result.report}")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from vital.compare import run_metrics, visuals_from_runs, write_table
    from vital.evaluate import evaluate
    from vital.io import ensure_writable, write_json
    from vital.models import load_model
    from vital.report import gallery_from_runs, write_gallery

    runs = [Path(d) for d in a.runs]
    for d in runs:
        if not (d / "record.json").is_file():
            raise VitalError(f"{d} is not a run folder (no record.json); pass folders written by vital class/compare")
    visuals = visuals_from_runs(runs)
    if not visuals:
        raise VitalError("the run folders hold no class visualizations to evaluate")
    device = resolve_device(a.device)
    if a.fid and not a.refs:
        raise VitalError("--fid compares with real images of each class: pass them with --refs (a class folder, a "
                         "folder of one class's images, or offline)")
    model = load_model(a.model, a.weights, device) if a.model else None
    out = ensure_writable(a.out)
    real = _real_images(a, sorted({v.target_class for v in visuals})) if a.refs else None
    table = evaluate(visuals, model, classifiers=parse_names(a.judges), real_images=real, fid=a.fid,
                     clip_weights=a.clip_weights, embedding_path=out / "embedding.png", device=device,
                     progress=not a.quiet)
    write_table(table, out)
    metrics = run_metrics(table, runs)
    write_json(metrics, out / "metrics.json")  # the run folders are read, never written
    print(table.to_markdown())
    print(f"gallery: {write_gallery(out, gallery_from_runs(runs, metrics), table=table)}")
    return 0


def _real_images(a: argparse.Namespace, classes: list[int]) -> dict[int, list]:
    """Real images per class for FID/KID and the embedding, by the shared --refs rule, as files or [0,1] tensors."""
    from torchvision.transforms.functional import to_tensor

    from vital.targets import Class

    refs = _refs(a, [Class(k) for k in classes], classes=True)
    return {k: list(r.files) + [to_tensor(im.convert("RGB")) for _, im in r.images]
            for k, r in zip(classes, refs, strict=True)}


def cmd_mine(a: argparse.Namespace) -> int:
    from vital.models import load_model
    from vital.references.mining import mine
    from vital.targets import load_directions

    directions = {}
    for spec in a.directions:
        layer, sep, path = spec.partition("=")
        if not sep or not layer or not path:
            raise VitalError(f"--directions takes LAYER=FILE (e.g. _blocks.7=dirs.npy), got '{spec}'")
        directions[layer] = [d.vector for d in load_directions(path, layer)]
    model = load_model(a.model, a.weights, resolve_device(a.device))
    store = mine(model, parse_names(a.layers), a.images, k=a.k, n_images=a.n_images, out=a.out,
                 batch_size=a.batch_size, workers=a.workers, resume=not a.no_resume, progress=not a.quiet,
                 grid=a.grid, directions=directions or None, decode=a.decode)
    for layer in store.layers:
        info = store.index["layers"][layer]
        print(f"{layer}: {info.get('channels')} channels, top-{a.k} patches and images per channel")
    print(f"store: {store.path} ({store.index.get('images_processed')} images)")
    return 0


def cmd_rerun(a: argparse.Namespace) -> int:
    from vital.outputs import RunFolder
    from vital.rerun import rerun

    with RunFolder(a.out, a.overwrite):
        result = rerun(a.record, device=a.device, progress=not a.quiet, weights=a.weights)
        _print_outputs(result, result.save(a.out, overwrite=a.overwrite))
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from vital.report import gallery_from_runs, write_gallery

    print(write_gallery(a.out, gallery_from_runs([Path(d) for d in a.runs])))
    return 0


def _print_outputs(result, paths: dict) -> None:
    for label, p in zip(result.labels, paths["images"], strict=True):
        print(f"{label}: {p}")
    if "sheet" in paths:
        print(f"contact sheet: {paths['sheet'][0]}")
    print(f"run record: {paths['record'][0]}")


def cmd_models(a: argparse.Namespace) -> int:
    from vital.models.zoo import available_models

    rows = available_models()
    if a.on_disk:
        rows = [r for r in rows if r.weights_on_disk]
    width = max(len(r.name) for r in rows)
    for r in rows:
        mark = "yes" if r.weights_on_disk else "no "
        print(f"{r.name:<{width}}  weights on disk: {mark}  {r.source:<24} {r.where}")
    print("timm models (timm:NAME) load from the Hugging Face cache when timm is installed.")
    return 0


def cmd_layers(a: argparse.Namespace) -> int:
    import torch

    from vital.features import layer_table
    from vital.models import load_model

    model = load_model(a.model, a.weights)
    x = torch.zeros(1, 3, model.size, model.size)
    rows = layer_table(model.module, x)
    width = max(len(r.name) for r in rows)
    for r in rows:
        if a.all or r.kind not in ("ReLU", "ReLU6", "SiLU", "GELU", "Identity", "Dropout", "ZeroPad2d"):
            print(f"{r.name:<{width}}  {r.kind:<24} {str(tuple(r.shape)):<20} {r.channels:>5} channels "
                  f"({r.layout.value})")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from vital.demo import run_demo

    run_demo(a.out, steps=a.steps, device=resolve_device(a.device), progress=not a.quiet)
    return 0


def _add_class(sub) -> None:
    c = sub.add_parser("class", help="visualise class neurons (several --class values run as one batch)")
    _add_model(c)
    c.add_argument("--class", "-c", dest="classes", action="append", required=True,
                   help="class index, list or range (281,967 or 0-9); repeatable")
    c.add_argument("--refs", required=True,
                   help="ImageNet-style train folder (one sub-folder per class, sorted), a plain folder of images "
                        "of the class (recognised: it has no sub-folders), or 'offline' for views of the "
                        "scikit-image photos")
    c.add_argument("--refs-flat", action="store_true", help="--refs is one folder of images for every class, even "
                                                             "if it has sub-folders")
    c.add_argument("-n", type=int, default=50, help="reference images per class (default 50)")
    _add_run(c)
    c.set_defaults(func=cmd_class)


def _add_neuron(sub) -> None:
    ne = sub.add_parser("neuron", help="visualise channels of layers (several --channel values run as one batch)")
    _add_model(ne)
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
    from vital.methods.vital import PARAMS
    from vital.objectives.alignment import MASK_RULES, RELEVANCE_METHODS

    v = ne.add_argument_group("VITAL for channels (defaults: bench/RESULTS.md)")
    v.add_argument("--relevance", default=None, choices=RELEVANCE_METHODS,
                   help="relevance of the target that weights the alignment (default lrp)")
    v.add_argument("--mask", default=None, choices=MASK_RULES,
                   help="reference: align to the references' relevance-weighted distributions (default); multiply: "
                        "the authors' per-step masks of the image's features")
    v.add_argument("--target-weight", type=float, default=None,
                   help="weight of matching the target channel's own distribution (default 0)")
    v.add_argument("--unweighted", type=float, default=None,
                   help="weight of plain alignment beside the relevance-weighted one (default 1)")
    v.add_argument("--param", default=None, choices=PARAMS,
                   help="image parameterization (default fourier; pixel is the paper's)")
    _add_run(ne)
    ne.set_defaults(func=cmd_neuron)


def cmd_atlas(a: argparse.Namespace) -> int:
    from vital.atlas import build_atlas

    print(f"atlas: {build_atlas(a.out, a.sources, progress=not a.quiet, kid=a.kid)}")
    return 0


def _add_atlas(sub) -> None:
    at = sub.add_parser("atlas", help="a static site to browse whole layers: batch outputs, runs, circuits, stores")
    at.add_argument("out", help="folder of the site (rebuilt incrementally)")
    at.add_argument("sources", nargs="+", help="batch outputs, run folders, circuit folders and mining stores")
    at.add_argument("--kid", action="store_true", help="each layer's KID of its visualizations against their own top "
                                                       "patches (Inception features; cached)")
    at.add_argument("--quiet", "-q", action="store_true")
    at.set_defaults(func=cmd_atlas)


def _add_circuit(sub) -> None:
    ci = sub.add_parser("circuit", help="the upstream channels a neuron's relevance comes from, visualised too")
    _add_model(ci)
    ci.add_argument("--layer", required=True, help="the target's layer")
    ci.add_argument("--channel", type=int, required=True, help="the target channel")
    ci.add_argument("--refs", required=True, help="a mining store with the target's and the upstream layers "
                                                  "(or a folder of images used for every channel)")
    ci.add_argument("-n", type=int, default=16, help="references per channel (default 16)")
    ci.add_argument("--depth", type=int, default=2, help="matched upstream layers, nearest first (default 2)")
    ci.add_argument("--top", type=int, default=4, help="channels per upstream layer (default 4)")
    ci.add_argument("--relevance", default=None, help="lrp (default) or lrp-restricted")
    ci.add_argument("--no-visualize", action="store_true", help="only compute and draw the circuit")
    _add_run(ci)
    ci.set_defaults(func=cmd_circuit)


def _add_compare_and_eval(sub) -> None:
    cp = sub.add_parser("compare", help="run several methods on several classes, evaluate, table + gallery")
    _add_model(cp)
    cp.add_argument("--classes", required=True, help="class indices or ranges, e.g. 281,967")
    cp.add_argument("--methods", default="vital,maco,fourier,deepinversion")
    cp.add_argument("--refs", required=True, help="ImageNet-style train folder, a flat folder with --refs-flat, "
                                                  "or 'offline' for the scikit-image photos")
    cp.add_argument("--refs-flat", action="store_true")
    cp.add_argument("-n", type=int, default=50, help="reference images per class")
    cp.add_argument("--judges", default="efficientnet_lite1,efficientnet_lite2", help="independent classifiers")
    cp.add_argument("--no-fid", action="store_true", help="skip FID")
    cp.add_argument("--clip-weights", default=None, help="local open_clip weights file for CLIP zero-shot")
    _add_run(cp)
    cp.set_defaults(func=cmd_compare)

    ev = sub.add_parser("eval", help="judge the class visualizations of run folders (top-k by models, CLIP, "
                                     "FID and KID with --fid)")
    ev.add_argument("runs", nargs="+", help="run folders (with record.json)")
    ev.add_argument("--model", "-m", default=None, help="the target model, to report its own top-k")
    ev.add_argument("--weights", default="default")
    ev.add_argument("--device", default=None)
    ev.add_argument("--judges", default="efficientnet_lite1,efficientnet_lite2")
    ev.add_argument("--clip-weights", default=None)
    ev.add_argument("--fid", action="store_true", help="FID and KID against real images of each class (--refs)")
    ev.add_argument("--refs", default=None, help="real images per class for --fid and the embedding: a class "
                                                 "folder, a folder of images, or offline")
    ev.add_argument("--refs-flat", action="store_true")
    ev.add_argument("-n", type=int, default=50, help="real images per class")
    ev.add_argument("--out", "-o", required=True)
    ev.add_argument("--quiet", "-q", action="store_true")
    ev.set_defaults(func=cmd_eval)


def _add_mine(sub) -> None:
    mi = sub.add_parser("mine", help="one pass over an image folder: top-k images and patches for every channel")
    mi.add_argument("model")
    mi.add_argument("--weights", default="default")
    mi.add_argument("--device", default=None)
    mi.add_argument("--layers", required=True, help="comma-separated dotted layer names")
    mi.add_argument("--directions", action="append", default=[], metavar="LAYER=FILE",
                    help="also mine directions (a .npy/.pt of (C,) or (K, C)) of a layer, by their readout: the "
                         "references of `vital neuron --direction`; repeatable")
    mi.add_argument("--images", required=True, help="image folder (searched recursively)")
    mi.add_argument("-k", type=int, default=50, help="patches (from distinct images) per channel")
    mi.add_argument("--n-images", type=int, default=None, help="top images per channel (default: k)")
    mi.add_argument("--out", "-o", required=True, help="store folder (resumed if it exists)")
    mi.add_argument("--batch-size", type=int, default=32)
    mi.add_argument("--workers", type=int, default=0)
    mi.add_argument("--decode", choices=("pil", "device"), default="pil",
                    help="device: decode JPEG files and preprocess on the model's device (GPU mining; nvJPEG)")
    mi.add_argument("--no-resume", action="store_true")
    mi.add_argument("--grid", action="store_true", help="write a grid of the top patches per layer")
    mi.add_argument("--quiet", "-q", action="store_true")
    mi.set_defaults(func=cmd_mine)


def _add_runs(sub) -> None:
    """`rerun` and `report`: commands on run folders."""
    rr = sub.add_parser("rerun", help="repeat a run from its record.json (same model, targets, options, seed, refs)")
    rr.add_argument("record", help="record.json or the run folder holding it")
    rr.add_argument("--out", "-o", required=True)
    rr.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    rr.add_argument("--device", default=None)
    rr.add_argument("--weights", default=None, help="weights file, when the recorded one is elsewhere")
    rr.add_argument("--quiet", "-q", action="store_true")
    rr.set_defaults(func=cmd_rerun)

    rp = sub.add_parser("report", help="write an HTML gallery of run folders")
    rp.add_argument("runs", nargs="+")
    rp.add_argument("--out", "-o", required=True)
    rp.set_defaults(func=cmd_report)


def _add_info(sub) -> None:
    """`models`, `layers` and `demo`."""
    m = sub.add_parser("models", help="list model names and whether their weights are on disk")
    m.add_argument("--on-disk", action="store_true", help="only models whose weights are on disk")
    m.set_defaults(func=cmd_models)

    la = sub.add_parser("layers", help="list a model's dotted layer names with output shapes")
    la.add_argument("model")
    la.add_argument("--weights", default="none", help="weights do not change shapes; default: none")
    la.add_argument("--all", action="store_true", help="also activations, padding and identity modules")
    la.set_defaults(func=cmd_layers)

    d = sub.add_parser("demo", help="the embedded default: VITAL on efficientnet_lite0 with offline photos")
    d.add_argument("--out", "-o", default="out/demo")
    d.add_argument("--steps", type=int, default=None)
    d.add_argument("--device", default=None)
    d.add_argument("--quiet", "-q", action="store_true")
    d.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    from vital.jobs.cli import add_batch_parser

    p = argparse.ArgumentParser(prog="vital", description="Feature visualization by distribution alignment (VITAL)")
    sub = p.add_subparsers(dest="command", required=True)
    add_batch_parser(sub)
    for add in (_add_class, _add_neuron, _add_circuit, _add_compare_and_eval, _add_mine, _add_runs, _add_info,
                _add_atlas):
        add(sub)
    return p


def _one_line(message, category, filename, lineno, line=None) -> str:
    """Notes and warnings as one line each, without the source line that Python's format adds."""
    return f"note: {message}\n" if category is UserWarning else f"{category.__name__}: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = _one_line
    try:
        return args.func(args)
    except VitalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())


