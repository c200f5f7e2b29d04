"""Can the held-out neuron bench see? Real patches judged on the registry corpus, layer by layer.

Before any visualization is ranked, a real image has to pass the test: a neuron's own top patch from the
optimisation half must retrieve that neuron's top patches mined on the judging half (photos it never saw) clearly
more often than chance. This bench checks exactly that, for every target layer, and says VALID or INVALID per layer.

Protocol: the corpus of `bench/corpus.py` (unmarked photos of at least 256 px) is split in two halves with
near-duplicates kept together (`corpus_split`); each photo gives seeded square crops at three scales (whole short
side, 1/2, 1/4) at --size px; each half is mined on its own (`vital.mine`, one forward pass per crop). Neurons: every
channel of the optimisation half's store, strongest first by k-th/1st top-patch score, whose top-k source photos
overlap no chosen one's by more than Jaccard 0.5 (at most --channels). Judging (`layer_judges`, the rule in its
docstring): per layer an independent network's block at the same relative depth, texture statistics below 2/3 of
the depth, pooled features above; retrieval among 16 candidate sets of the same layer, exact over the draws
(chance 6%). Rows, each a mean over neurons with a 95% percentile bootstrap interval:
- real patch: the optimisation half's top patch against the judging half's top-k sets;
- typical real patch (medoid): the optimisation half's top-k patch closest on average to the others of its set in
  the judge's features (added after the first run, as a diagnostic: a visualization matches the whole set);
- 2nd real patch: its second patch (a second "method" close to the first: the paired interval of the two shows how
  many neurons a 10-point difference needs);
- held-out patch (ceiling): the judging half's top patch against the rest of its own set and the other sets;
- chance (shuffled): the real patch against a set assigned at random, averaged over 50 assignments;
- real patch, issue 19's judge: the same images in efficientnet_lite2's penultimate features.
VALID when the real patch retrieves at least 3x chance and its interval lies above the shuffled row's interval.

Usage: python bench/quality_validity.py [--corpus ~/.cache/vital/corpus] [--targets MODEL:LAYER,...]
Crops, stores and judge features are cached under --out; a rerun costs only what changed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vital
from vital.metrics.embedding import penultimate_features

sys.path.insert(0, str(Path(__file__).parent))
from corpus import DEFAULT_OUT, read_manifest  # noqa: E402
from corpus_split import families, hashes_of, split_families, usable  # noqa: E402
from intervals import bootstrap  # noqa: E402
from layer_judges import (  # noqa: E402
    CANDIDATES,
    JudgeSpec,
    chance,
    judge_features,
    judge_for,
    judge_network,
    medoid,
    retrieval,
    shuffled_retrieval,
)
from quality_neuron import fmt, load01  # noqa: E402
from sheets import grid  # noqa: E402

TARGETS = ("efficientnet_lite0:_blocks.4,efficientnet_lite0:_blocks.7,efficientnet_lite0:_blocks.12,"
           "efficientnet_lite1:_blocks.10")
SCALES = ((1.0, 1), (0.5, 2), (0.25, 4))
CROP = re.compile(r"\.c\d+\.png$")


def photo_of(crop: str) -> str:
    """The corpus photo a crop was cut from."""
    return CROP.sub("", Path(crop).name)


def write_crops(photos: Path, files: list[str], folder: Path, size: int, seed: int = 0) -> Path:
    """Seeded square crops of each photo (SCALES of its short side) resized to `size`; a crop's place depends only
    on its photo's name and the seed, so both halves and reruns agree. Existing crops are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        names = [folder / f"{f}.c{j}.png" for j in range(sum(n for _, n in SCALES))]
        if all(n.is_file() for n in names):
            continue
        rng = np.random.default_rng([seed, *f.encode()])
        with Image.open(photos / f) as im:
            im = im.convert("RGB")
            w, h = im.size
            boxes = [(fraction, rng.random(2)) for fraction, count in SCALES for _ in range(count)]
            for name, (fraction, (u, v)) in zip(names, boxes, strict=True):
                side = round(min(w, h) * fraction)
                left, top = int(u * (w - side)), int(v * (h - side))
                im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC).save(name)
    return folder


def halves(corpus: Path) -> tuple[list[str], list[str], int]:
    """(optimisation half, judging half, number of near-duplicate families with more than one photo)."""
    photos = corpus / "photos"
    files = usable(read_manifest(corpus / "manifest.tsv"), photos)
    fam = families(hashes_of(photos, files))
    sizes: dict[str, int] = {}
    for g in fam.values():
        sizes[g] = sizes.get(g, 0) + 1
    opt, judge = split_families(fam)
    return opt, judge, sum(1 for s in sizes.values() if s > 1)


def choose(store, layer: str, k: int, cap: int) -> list[int]:
    picked = store.distinct_channels(layer, cap, k, 0.5, group=photo_of)
    return [c for c, s in picked if s > 0]


def layer_features(store_opt, store_judge, layer, channels, k, size, judge, spec: JudgeSpec, cache: Path) -> dict:
    """Judge features (layer judge and issue 19's penultimate) of each neuron's top-k patches of the optimisation
    half and of the judging half; kept on disk per layer, channels, k and judge."""
    key = {"layer": layer, "channels": channels, "k": k, "spec": spec.__dict__, "size": size, "opt_n": k}
    if cache.is_file():
        saved = torch.load(cache, weights_only=False)
        if saved["key"] == key:
            return saved
    opt = [load01(store_opt.references(layer, c, kind="patches", n=k), size) for c in channels]
    held = [load01(store_judge.references(layer, c, kind="patches", n=k), size) for c in channels]
    everything = torch.cat([*opt, *held])
    feats = judge_features(judge, spec, everything)
    pen = penultimate_features(judge, everything)
    n = len(channels)
    split = np.cumsum([len(x) for x in [*opt, *held]])[:-1]
    saved = {"key": key, "opt": np.split(feats, split)[:n], "held": np.split(feats, split)[n:],
             "opt_pen": np.split(pen, split)[:n], "held_pen": np.split(pen, split)[n:],
             "thumbs": [torch.cat([o[:2], h[:3]]) for o, h in zip(opt, held, strict=True)]}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, cache)
    return saved


def rows_of(f: dict) -> dict[str, np.ndarray]:
    """Per-neuron hit probabilities of every row of one layer."""
    top1 = np.stack([o[0] for o in f["opt"]])
    top2 = np.stack([o[min(1, len(o) - 1)] for o in f["opt"]])
    return {"real patch": retrieval(top1, f["held"]),
            "2nd real patch": retrieval(top2, f["held"]),
            "held-out patch (ceiling)": retrieval(np.stack([h[0] for h in f["held"]]), [h[1:] for h in f["held"]]),
            "typical real patch (medoid)": retrieval(np.stack([medoid(o) for o in f["opt"]]), f["held"]),
            "chance (shuffled)": shuffled_retrieval(top1, f["held"]),
            "real patch, issue 19's judge": retrieval(np.stack([o[0] for o in f["opt_pen"]]), f["held_pen"])}


def verdict(rows: dict[str, np.ndarray], boot: int) -> tuple[dict, str, float]:
    """Intervals of every row, VALID/INVALID, and the neurons a +-10-point paired interval needs (from the paired
    interval of the two real patches)."""
    n = len(rows["real patch"])
    stats = {name: bootstrap(lambda i, v=v: float(v[i].mean()), n, boot) for name, v in rows.items()}
    c = chance(n)
    real, shuffled = stats["real patch"], stats["chance (shuffled)"]
    ok = real[0] >= 3 * c and real[1] > shuffled[2]
    diff = rows["real patch"] - rows["2nd real patch"]
    paired = bootstrap(lambda i: float(diff[i].mean()), n, boot)
    half = (paired[2] - paired[1]) / 2
    stats["paired: real - 2nd"] = paired
    return stats, "VALID" if ok else "INVALID", n * (half / 0.10) ** 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--targets", default=TARGETS)
    ap.add_argument("--only", default="", help="judge only these of the targets' layers (mining still covers all)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--channels", type=int, default=96, help="at most this many neurons per layer")
    ap.add_argument("-k", type=int, default=12, help="held-out reference patches per neuron")
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sheets", default="docs/images", help="folder of the per-layer contact sheets ('' for none)")
    ap.add_argument("--out", type=Path, default=Path("bench/out/validity"))
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    corpus = a.corpus.expanduser()
    opt, held, dup = halves(corpus)
    rows = read_manifest(corpus / "manifest.tsv")
    used = {r["file"]: r for r in rows}
    sources = sorted({(used[f]["registry"], used[f]["package"]) for f in opt + held})
    print(f"corpus {corpus}: {len(opt) + len(held)} photos from {len(sources)} packages "
          f"({', '.join(f'{r} {sum(1 for s in sources if s[0] == r)}' for r in ('debian', 'pypi', 'npm'))}); "
          f"{dup} near-duplicate families; halves {len(opt)} / {len(held)}; crops {SCALES} at {a.size} px")
    folders = {tag: write_crops(corpus / "photos", files, a.out / f"crops{a.size}_{tag}", a.size)
               for tag, files in (("opt", opt), ("judge", held))}
    targets = [t.split(":") for t in a.targets.split(",")]
    results = {}
    for name in dict.fromkeys(m for m, _ in targets):
        results.update(judge_model(a, name, [layer for m, layer in targets if m == name], folders))
    (a.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wall {time.perf_counter() - t0:.0f} s; numbers: {a.out / 'results.json'}")


def count_blocks(model) -> int:
    return sum(1 for n, _ in model.module.named_modules() if re.fullmatch(r"_blocks\.\d+", n))


def judge_model(a, name: str, layers: list[str], folders: dict[str, Path]) -> dict:
    """Mine both halves with one target network, then judge each of its layers; prints a table per layer."""
    model = vital.load_model(name, size=a.size)
    stores = {tag: vital.mine(model, layers, str(folder), k=max(16, a.k), progress=False,
                              out=a.out / f"store_{name}_{a.size}_{tag}_{'-'.join(layers)}")
              for tag, folder in folders.items()}
    judge = vital.load_model(judge_network(name), size=a.size)
    spec_of = partial(judge_for, name, target_blocks=count_blocks(model), judge_blocks=count_blocks(judge))
    out = {}
    for layer in [x for x in layers if not a.only or x in a.only.split(",")]:
        spec = spec_of(layer)
        channels = choose(stores["opt"], layer, a.k, a.channels)
        f = layer_features(stores["opt"], stores["judge"], layer, channels, a.k, a.size, judge, spec,
                           a.out / "features" / f"{name}_{layer}_{a.size}.pt")
        rows = rows_of(f)
        stats, valid, needed = verdict(rows, a.boot)
        n = len(channels)
        print(f"\n{name} {layer}: {n} neurons; judge {spec.network} {spec.block} ({spec.kind}); retrieval among "
              f"{min(CANDIDATES, n)} candidate sets, chance {100 * chance(n):.0f}%: {valid}")
        print("| row | retrieval |\n|---|---|")
        for row, v in stats.items():
            print(f"| {row} | {fmt(v, pct=True) if row != 'paired: real - 2nd' else fmt(v)} |")
        print(f"neurons for a +-10-point paired interval (from the real - 2nd interval): {needed:.0f}")
        if a.sheets:
            path = Path(a.sheets) / f"validity_{name}_{layer.replace('.', '_')}.jpg"
            grid(path, [list(t) for t in f["thumbs"][:12]], ["opt half 1", "opt half 2", "held-out 1",
                                                             "held-out 2", "held-out 3"], [str(c) for c in channels[:12]])
        out[f"{name}:{layer}"] = {"neurons": n, "channels": channels, "judge": spec.__dict__, "valid": valid,
                                  "stats": stats, "needed_for_10_points": needed,
                                  "rows": {k: v.tolist() for k, v in rows.items()}}
    return out


if __name__ == "__main__":
    main()
