"""Time to first paint of a 2000-neuron atlas layer page in headless Chromium, and the atlas build time.

A small random network with a 2000-channel layer is mined over a few random images (every channel gets a top patch
as its thumbnail) and 200 of its channels are visualised (2 steps each: only the page is measured); the atlas is
built twice (the second build is the incremental one, nothing changed), and the layer page is opened in headless
Chromium, which reports the page's first-contentful-paint and when every thumbnail has loaded once they are all
switched to eager loading. Reported, not asserted. Usage: python bench/atlas_paint.py [--channels 2000]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

import vital
from vital.models import load_model
from vital.pages.atlas import build_atlas
from vital.references.mining import mine

CHECK = """<script>
window.addEventListener('load', () => {
  const loadedAt = performance.now();
  const imgs = [...document.images];
  const lazyDone = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  imgs.forEach(i => { i.loading = 'eager'; });
  const timer = setInterval(() => {
    if (!imgs.every(i => i.complete)) return;
    clearInterval(timer);
    const paint = Object.fromEntries(performance.getEntriesByType('paint').map(p => [p.name, p.startTime]));
    document.body.setAttribute('data-check', JSON.stringify({paint, load: loadedAt, lazyLoadedAtLoad: lazyDone,
      allImages: performance.now(), cards: document.querySelectorAll('.card').length}));
  }, 20);
});
</script>"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--channels", type=int, default=2000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                            nn.Conv2d(16, a.channels, 3, stride=2, padding=1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(a.channels, 10))
        model = load_model(net, size=32, name="wide")
        (root / "photos").mkdir()
        rng = np.random.default_rng(0)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "photos" / f"{i}.png")
        store = mine(model, ["3"], root / "photos", k=3, out=root / "store", progress=False)
        shown = list(range(0, a.channels, max(1, a.channels // 200)))
        res = vital.visualize(model, [vital.Channel("3", c) for c in shown],
                              [store.references("3", c, n=2) for c in shown], steps=2, warmup=1, progress=False)
        res.save(root / "runs" / "wide")
        t = time.perf_counter()
        build_atlas(root / "site", [root / "runs", root / "store"], progress=False)
        first = time.perf_counter() - t
        t = time.perf_counter()
        build_atlas(root / "site", [root / "runs", root / "store"], progress=False)
        again = time.perf_counter() - t
        page = root / "site" / "layers" / "3.html"
        check = page.with_name("check.html")
        check.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
        cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               f"--user-data-dir={root / 'chr'}", "--virtual-time-budget=60000", "--dump-dom", check.as_uri()]
        t = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
        wall = time.perf_counter() - t
        found = json.loads(re.search(r'data-check="([^"]*)"', out).group(1).replace("&quot;", '"'))
        size = page.stat().st_size
    print(f"channels: {a.channels} ({len(shown)} visualised, the rest shown by their top patch)")
    print(f"atlas build: {first:.1f} s; incremental rebuild with nothing changed: {again:.1f} s")
    print(f"layer page: {size / 1024:.0f} KiB, {found['cards']} cards")
    print(f"headless Chromium: first-contentful-paint {found['paint'].get('first-contentful-paint', float('nan')):.0f} ms, "
          f"load event {found['load']:.0f} ms ({found['lazyLoadedAtLoad']} thumbnails decoded by then), every "
          f"thumbnail loaded {found['allImages']:.0f} ms (virtual time); chromium wall time {wall:.1f} s")


if __name__ == "__main__":
    main()
