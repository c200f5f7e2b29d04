"""Quality of intermediate-neuron visualizations, judged on photos the optimisation never saw.

Held-out protocol: the photographs that installed packages ship (scikit-image's data folder, matplotlib's sample
data; `vital.references.photos.offline_photo_files`) are split by photo, with a seeded permutation, into two halves.
Seeded square crops at several scales (`photo_corpus`) of each half are mined separately (`vital.mine`). Neurons are
chosen on the *optimisation half* only (`MiningStore.distinct_channels`; the rule is printed), the visualizations
are optimised against their top-k patches of that half, and every metric is computed against the same neurons'
top-k patches mined on the *judging half*: references the optimisation never saw. Judges (efficientnet_lite2 for
retrieval, Inception-v3 for KID) never enter an optimisation.

Metrics, per method, over the neurons of every layer together (each with a 95% percentile bootstrap interval over
neurons, `bench/intervals.py`):
- activation: the target channel's spatial max on the visualization over its median on the held-out references
  (median over neurons);
- retrieval: share of visualizations whose nearest held-out reference set (mean cosine in efficientnet_lite2's
  penultimate features) is their own, among the neurons of their layer (chance 1/n);
- HF: high-frequency share of spectral power (above a quarter of Nyquist), mean over the visualizations over the
  mean over their held-out references (1: as sharp as real patches; pixel noise about 20);
- KID x1000 (Inception-v3 pool features, unbiased, kernel (x.y/d+1)^3) of the visualizations against every held-out
  reference patch of their layer, averaged over layers;
- faithfulness: path similarity after Geirhos et al. 2024 (`bench/path_judge.py`, docs/concepts/faithfulness.md):
  per layer from the input to the neuron, the Spearman correlation of per-channel means with half of the neuron's
  held-out references, as a share of the way from the floor (the judging half's least-driving patches) to the
  ceiling (the other half of its held-out references), on the path averaged over layers; mean over neurons.
  "path rho" is the raw correlation, mean over layers; the floor and ceiling rows give theirs.
Ceiling rows: "patch from the optimisation half" is each neuron's top reference (a real image the optimisation
matches) judged like a visualization; "held-out patch" is the judging half's own top patch judged against the rest
of that half's set.

Usage: python bench/quality_neuron.py [--steps 200] [--size 128] [--methods vital,vital-none,...]
Runs are cached under OUT/runs, so a second call only computes what changed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vital
from vital.metrics.embedding import penultimate_features
from vital.metrics.fid import InceptionFeatures
from vital.metrics.neuron import channel_spatial_max, high_frequency_share, retrieval_from_features
from vital.references.photos import corpus_source, offline_photo_files, photo_corpus

sys.path.insert(0, str(Path(__file__).parent))
from intervals import KIDBootstrap, bootstrap  # noqa: E402
from path_judge import PathJudge, judging_pool  # noqa: E402
from sheets import grid  # noqa: E402

# name -> (method, options): the library's default for channels, the alignment alone (the default before issue 19:
# no activation term), then one change from one of them each. Rows name their options explicitly where a default
# changed, so that a cached run keeps its meaning.
METHODS: dict[str, tuple[str, dict]] = {
    "vital": ("vital", {}),
    "vital-none": ("vital", {"relevance": "none"}),
    "align": ("vital", {"activation": 0.0}),
    "align-none": ("vital", {"activation": 0.0, "relevance": "none"}),
    "vital-lrp-restricted": ("vital", {"relevance": "lrp-restricted"}),
    "vital-guided-backprop": ("vital", {"relevance": "guided-backprop"}),
    "act-0.1": ("vital", {"activation": 0.1}),
    "act-10": ("vital", {"activation": 10.0}),
    "sliced": ("vital", {"sliced": 1.0}),
    "sliced-only": ("vital", {"sliced": 1.0, "unweighted": 0.0}),
    "robust": ("vital", {"augment": "scale-rotate"}),
    "unweighted-0": ("vital", {"unweighted": 0.0}),
    "unweighted-3": ("vital", {"unweighted": 3.0}),
    "lr-0.2": ("vital", {"lr": 0.2}),  # the Fourier image's Adam step, 4x Lucid's 0.05
    "jitter-8": ("vital", {"jitter": 8}),  # the default is the authors' 30 px, a quarter of a 128 px image
    "align-jitter-8": ("vital", {"activation": 0.0, "jitter": 8}),
    "fourier": ("fourier", {}),
    "maco": ("maco", {}),
}
DEFAULT_METHODS = "vital,vital-none,align,fourier"
SPLIT_SEED = 0
# near-duplicate photos go to the same half, or the judging half would hold a copy of an optimisation photo
FAMILIES = {"chessboard_GRAY": "chessboard", "chessboard_RGB": "chessboard", "motorcycle_left": "motorcycle",
            "motorcycle_right": "motorcycle", "logo": "logo", "logo2": "logo"}


def split_photos(seed: int = SPLIT_SEED) -> tuple[list[str], list[str]]:
    """The offline photos' stems in two halves (optimisation, judging): families of near-duplicates (FAMILIES)
    are shuffled as one unit by a seeded permutation, then dealt to the optimisation half until it holds half."""
    stems = [Path(p).stem for p in offline_photo_files()]
    families = sorted({FAMILIES.get(s, s) for s in stems})
    order = np.random.default_rng(seed).permutation(len(families))
    opt: list[str] = []
    for i in order:
        members = [s for s in stems if FAMILIES.get(s, s) == families[i]]
        if len(opt) + len(members) <= (len(stems) + 1) // 2:
            opt += members
    return sorted(opt), sorted(s for s in stems if s not in opt)


def half_corpus(corpus: Path, stems: list[str], folder: Path) -> Path:
    """A folder holding the crops of `corpus` cut from the photos `stems` (copies; a second call is free)."""
    folder.mkdir(parents=True, exist_ok=True)
    keep = set(stems)
    for f in sorted(corpus.glob("*.png")):
        if corpus_source(f.name) in keep and not (folder / f.name).exists():
            shutil.copy(f, folder / f.name)
    return folder


def choose_channels(store, layer: str, k: int, n: int) -> tuple[list[int], str]:
    """`n` channels of the optimisation half's store: strength = k-th / 1st top patch score, taken greedily,
    with the smallest source-photo Jaccard overlap (0.25, 0.4, 0.55, ...) that yields n of them."""
    for overlap in (0.25, 0.4, 0.55, 0.7, 1.0):
        picked = store.distinct_channels(layer, n, k, overlap, group=corpus_source)
        if len(picked) >= n:
            break
    rule = (f"strongest {n} channels by k-th/1st top-{k} patch score on the optimisation half, source-photo "
            f"Jaccard <= {overlap}: " + ", ".join(f"{c} ({s:.2f})" for c, s in picked))
    return [c for c, _ in picked], rule


def load01(refset, size: int) -> torch.Tensor:
    from torchvision.transforms.functional import to_tensor

    return refset.load(lambda im: to_tensor(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)))


def run_cache(out: Path, name: str, layer: str, steps: int, warmup: int, size: int) -> Path:
    return out / "runs" / name / f"{layer.replace('.', '_')}_{steps}_w{warmup}_{size}.pt"


def run_method(model, layer, channels, refs, name, steps, warmup, out: Path) -> dict:
    """Images and seconds of one method on one layer's neurons, one batch (cached on disk)."""
    cache = run_cache(out, name, layer, steps, warmup, model.size)
    if cache.is_file():
        return torch.load(cache, weights_only=False)
    method, options = METHODS[name]
    t0 = time.perf_counter()
    res = vital.visualize(model, [vital.Channel(layer, c) for c in channels], refs, method=method, steps=steps,
                          warmup=warmup, seed=0, progress=False, **options)
    run = {"images": res.images.cpu(), "seconds": time.perf_counter() - t0,
           "step_ms": res.record["timings"]["step_ms"], "record": res.record.get("options", {})}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(run, cache)
    return run


class LayerJudge:
    """The held-out side of every metric for one layer's neurons: per held-out image its channel's spatial max, its
    judge embedding, its HF share and its Inception features, computed once and kept on disk (`cache`)."""

    def __init__(self, model, judge, inception, layer, channels, held01, cache: Path):
        self.model, self.judge, self.inception, self.layer, self.channels = model, judge, inception, layer, channels
        key = {"layer": layer, "channels": list(channels), "n": [len(h) for h in held01]}
        saved = torch.load(cache, weights_only=False) if cache.is_file() else None
        if saved is None or saved["key"] != key:
            saved = {"key": key,
                     "smax": [channel_spatial_max(model, layer, c, h).numpy() for c, h in zip(channels, held01, strict=True)],
                     "emb": [penultimate_features(judge, h) for h in held01],
                     "hf": [high_frequency_share(h) for h in held01],
                     "inception": [inception(h) for h in held01]}
            torch.save(saved, cache)
        self.held = saved

    def per_neuron(self, images: torch.Tensor, skip_first: bool = False) -> dict:
        """Per-neuron values of one image per neuron: activation ratio, retrieval hit, HF of the image and of its
        held-out set; and Inception features of images and of the held-out sets. `skip_first` judges against each
        held-out set without its top patch (the held-out ceiling row, whose image is that patch)."""
        s = 1 if skip_first else 0
        h = self.held
        medians = np.array([float(np.median(m[s:])) for m in h["smax"]])
        acts = np.array([float(channel_spatial_max(self.model, self.layer, c, images[i:i + 1])[0])
                         for i, c in enumerate(self.channels)]) / medians
        ret = retrieval_from_features(penultimate_features(self.judge, images), [e[s:] for e in h["emb"]])
        return {"activation": acts, "hit": np.array([r == 1 for r in ret.ranks], float), "ranks": ret.ranks,
                "hf": high_frequency_share(images), "hf_refs": np.array([f[s:].mean() for f in h["hf"]]),
                "inception": self.inception(images), "ref_inception": np.concatenate([f[s:] for f in h["inception"]])}


def judged(lj: LayerJudge, run: dict, cache: Path, key: str) -> dict:
    """`lj.per_neuron(run images)`, kept in the run's cache file."""
    if key not in run:
        run[key] = lj.per_neuron(run["images"])
        torch.save(run, cache)
    return run[key]


def summarise(parts: list[dict], boot: int) -> dict:
    """Figures over the neurons of every layer together, each with its bootstrap interval. Retrieval hits are per
    layer (each neuron against its own layer's sets); KID is the mean over layers of each layer's KID."""
    act = np.concatenate([p["activation"] for p in parts])
    hit = np.concatenate([p["hit"] for p in parts])
    hf = np.concatenate([p["hf"] for p in parts])
    hf_refs = np.concatenate([p["hf_refs"] for p in parts])
    layer_of = np.concatenate([np.full(len(p["hit"]), i) for i, p in enumerate(parts)])
    kids = [KIDBootstrap(p["inception"], p["ref_inception"]) for p in parts]
    offsets = np.cumsum([0] + [len(p["hit"]) for p in parts])

    def kid(idx: np.ndarray) -> float:
        vals = [kids[li](idx[layer_of[idx] == li] - offsets[li]) for li in range(len(parts))]
        return float(np.mean(vals)) * 1000

    n = len(act)
    extra = {}
    if all("path" in p for p in parts):
        summ = np.concatenate([p["path"]["summary"] for p in parts])
        rho = np.concatenate([p["path"]["visual"].mean(1) for p in parts])
        extra = {"faithfulness": bootstrap(lambda i: float(np.nanmean(summ[i])), n, boot),
                 "path_rho": bootstrap(lambda i: float(rho[i].mean()), n, boot)}
    return {"n": n, **extra,
            "activation": bootstrap(lambda i: float(np.median(act[i])), n, boot),
            "retrieval": bootstrap(lambda i: float(hit[i].mean()), n, boot),
            "hf": bootstrap(lambda i: float(hf[i].mean() / hf_refs[i].mean()), n, boot),
            "kid": bootstrap(kid, n, boot),
            "chance": float(np.mean([1 / len(p["hit"]) for p in parts]))}


def pathed(pj: PathJudge, run: dict, cache: Path) -> dict:
    """`pj.per_neuron(run images)`, kept in the run's cache file."""
    if "path" not in run:
        run["path"] = pj.per_neuron(run["images"])
        torch.save(run, cache)
    return run["path"]


def path_tables(paths: dict[str, PathJudge], parts: dict[str, dict[str, dict]], layers: list[str], boot: int
                ) -> dict:
    """Print the floor and ceiling rows (raw correlation, mean over layers, over every neuron) and, per depth, the
    mean correlation per layer of the floor, the ceiling and each row with a path; return them."""
    floor = np.concatenate([np.stack(paths[layer].floor).mean(1) for layer in layers])
    ceiling = np.concatenate([np.stack(paths[layer].ceiling).mean(1) for layer in layers])
    out = {"floor": bootstrap(lambda i: float(floor[i].mean()), len(floor), boot),
           "ceiling": bootstrap(lambda i: float(ceiling[i].mean()), len(ceiling), boot),
           "gap": bootstrap(lambda i: float((ceiling[i] - floor[i]).mean()), len(floor), boot)}
    print(f"\npath rho over all neurons: floor (least-driving judging-half patches) {fmt(out['floor'])}, ceiling "
          f"(held-out references) {fmt(out['ceiling'])}, ceiling - floor {fmt(out['gap'])}")
    for layer in layers:
        pj = paths[layer]
        print(f"\n{layer}: mean rho per layer ({', '.join(pj.layers)})")
        rows = {"floor": np.stack(pj.floor), "ceiling": np.stack(pj.ceiling),
                **{name: ps[layer]["path"]["visual"] for name, ps in parts.items() if "path" in ps.get(layer, {})}}
        for name, values in rows.items():
            print(f"  {name}: " + " ".join(f"{v:+.2f}" for v in values.mean(0)))
            out.setdefault("per_layer", {}).setdefault(layer, {})[name] = values.mean(0).round(4).tolist()
    return out


def fmt(v: tuple[float, float, float] | None, digits: int = 2, pct: bool = False) -> str:
    if v is None:
        return "–"
    if pct:
        return f"{100 * v[0]:.0f}% [{100 * v[1]:.0f}, {100 * v[2]:.0f}]"
    return f"{v[0]:.{digits}f} [{v[1]:.{digits}f}, {v[2]:.{digits}f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20, help="learning-rate warmup steps, every method")
    ap.add_argument("--size", type=int, default=128, help="input size of optimisation, mining and judging")
    ap.add_argument("--layers", default="_blocks.7,_blocks.12")
    ap.add_argument("--methods", default=DEFAULT_METHODS)
    ap.add_argument("--ablations", default="", help="methods run on --ablate-layers only, after --methods")
    ap.add_argument("--ablate-layers", default="", help="layers of the ablations (default: every layer)")
    ap.add_argument("--channels", type=int, default=16, help="neurons per layer")
    ap.add_argument("-k", type=int, default=12, help="reference patches per neuron, on each half")
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sheet", default="", help="write a JPEG contact sheet here")
    ap.add_argument("--sheet-methods", default="", help="its columns (default: every method run)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="bench/out/quality_neuron")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    t_start = time.perf_counter()
    model = vital.load_model(a.model, device=a.device, size=a.size)
    judge = vital.load_model("efficientnet_lite2", device=a.device)
    inception = InceptionFeatures(a.device)
    layers = a.layers.split(",")
    opt_half, judge_half = split_photos()
    corpus = Path(photo_corpus(out / f"corpus{a.size}", size=a.size))
    stores = {}
    for tag, stems in (("opt", opt_half), ("judge", judge_half)):
        folder = half_corpus(corpus, stems, out / f"corpus{a.size}_{tag}")
        stores[tag] = vital.mine(model, layers, os.fspath(folder), k=max(16, a.k + 1),
                                 out=out / f"store_{a.model}_{a.size}_{tag}_{'-'.join(layers)}", progress=False)
    print(f"{a.model}, {a.steps} steps (warmup {a.warmup}) at {a.size}px, seed 0, device {a.device}; photos split by seed {SPLIT_SEED}: "
          f"optimisation half {opt_half}; judging half {judge_half}; references: top-{a.k} patches per neuron")
    main_methods = [m for m in a.methods.split(",") if m]
    methods = main_methods + [m for m in a.ablations.split(",") if m and m not in main_methods]
    parts: dict[str, dict[str, dict]] = {m: {} for m in ["patch (optimisation half)", "held-out patch", *methods]}
    seconds: dict[str, float] = {m: 0.0 for m in methods}
    sheet_rows: list[tuple[str, int]] = []
    sheet_cols: dict[str, list[torch.Tensor]] = {}
    judges, refs_of, paths = {}, {}, {}
    pool = judging_pool(out / f"corpus{a.size}_judge")
    for layer in layers:
        channels, rule = choose_channels(stores["opt"], layer, a.k, a.channels)
        print(f"{layer}: {rule}", flush=True)
        refs = refs_of[layer] = [stores["opt"].references(layer, c, kind="patches", n=a.k) for c in channels]
        held01 = [load01(stores["judge"].references(layer, c, kind="patches", n=a.k), a.size) for c in channels]
        opt01 = [load01(r, a.size) for r in refs]
        lj = judges[layer] = LayerJudge(model, judge, inception, layer, channels, held01,
                                        out / f"judge_{a.model}_{a.size}_{a.k}_{layer.replace('.', '_')}.pt")
        pj = paths[layer] = PathJudge(model, layer, channels, held01, pool)
        top_opt = torch.stack([r[0] for r in opt01])
        parts["patch (optimisation half)"][layer] = {**lj.per_neuron(top_opt), "path": pj.per_neuron(top_opt)}
        parts["held-out patch"][layer] = lj.per_neuron(torch.stack([r[0] for r in held01]), skip_first=True)
        sheet_rows += [(layer, c) for c in channels]
        sheet_cols.setdefault("ref (opt half)", []).extend(r[0] for r in opt01)
        sheet_cols.setdefault("held-out ref", []).extend(r[0] for r in held01)
    ablate = a.ablate_layers.split(",") if a.ablate_layers else layers
    for name in methods:  # every layer of a method before the next method: the first rows finish first
        for layer in layers if name in main_methods else ablate:
            lj = judges[layer]
            run = run_method(model, layer, lj.channels, refs_of[layer], name, a.steps, a.warmup, out)
            seconds[name] += run["seconds"]
            cache = run_cache(out, name, layer, a.steps, a.warmup, a.size)
            parts[name][layer] = {**judged(lj, run, cache, "judged"), "path": pathed(paths[layer], run, cache)}
            if layer == ablate[0] or name in main_methods:
                sheet_cols.setdefault(name, []).extend(run["images"])
            print(f"  {name} {layer}: {run['seconds']:.0f} s, {run['step_ms']:.0f} ms/step", flush=True)
    results = {}
    chance = 1 / a.channels
    print(f"\n{len(layers)} layers x {a.channels} neurons; 95% percentile bootstrap over neurons ({a.boot} draws); "
          f"retrieval chance {100 * chance:.0f}%")
    print("| method | activation / held-out ref median | retrieval of its own neuron | HF power vs held-out refs "
          "| KID x1000 | faithfulness (0 floor, 1 ceiling) | path rho | s per image |")
    print("|---|---|---|---|---|---|---|---|")
    for name, ps in parts.items():
        if len(ps) < len(layers):
            continue
        s = summarise([ps[layer] for layer in layers], a.boot)
        secs = f"{seconds[name] / s['n']:.0f}" if name in seconds else ""
        print(f"| {name} | {fmt(s['activation'])} | {fmt(s['retrieval'], pct=True)} | {fmt(s['hf'])} | "
              f"{fmt(s['kid'], 1)} | {fmt(s.get('faithfulness'))} | {fmt(s.get('path_rho'))} | {secs} |")
        results[name] = {"all": s}
    results["paths"] = path_tables(paths, parts, layers, a.boot)
    for layer in layers:
        print(f"\n{layer} alone ({a.channels} neurons; retrieval chance {100 * chance:.0f}%)")
        print("| method | activation | retrieval | HF | KID x1000 | faithfulness | path rho |\n"
              "|---|---|---|---|---|---|---|")
        for name, ps in parts.items():
            if layer not in ps:
                continue
            s = summarise([ps[layer]], a.boot)
            print(f"| {name} | {fmt(s['activation'])} | {fmt(s['retrieval'], pct=True)} | {fmt(s['hf'])} | "
                  f"{fmt(s['kid'], 1)} | {fmt(s.get('faithfulness'))} | {fmt(s.get('path_rho'))} |")
            results.setdefault(name, {})[layer] = {**s, "hits": ps[layer]["hit"].tolist(),
                                                   "activation_all": np.round(ps[layer]["activation"], 3).tolist()}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if a.sheet:
        cols = [c for c in (a.sheet_methods or a.methods).split(",") if c in sheet_cols]
        cols += ["ref (opt half)", "held-out ref"]
        rows = [i for i in range(len(sheet_rows)) if all(i < len(sheet_cols[c]) for c in cols)]
        grid(Path(a.sheet), [[sheet_cols[c][i] for c in cols] for i in rows], cols,
             [f"{sheet_rows[i][0].split('.')[-1]}:{sheet_rows[i][1]}" for i in rows])
    print(f"wall {time.perf_counter() - t_start:.0f} s; numbers: {out / 'results.json'}")


if __name__ == "__main__":
    main()
