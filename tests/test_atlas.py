"""The atlas on 520 neurons of a small random network: every page, link and image resolves, in headless Chromium
every thumbnail of a layer page loads and the channel filter works, a neuron page's path-similarity plot draws, a
rebuild redoes only what changed; and circuit shares against an explicit z+ computation."""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import vital
from vital.circuit import circuit, svg
from vital.models import load_model
from vital.pages.atlas import build_atlas
from vital.references.images import from_images
from vital.references.mining import mine

CHROMIUM = Path("/usr/bin/chromium")
WIDE = 520


def wide_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, WIDE, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(WIDE, 10))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A store of every channel of a 520-channel layer, 40 of them visualised in one run, and a circuit."""
    root = tmp_path_factory.mktemp("atlas")
    model = load_model(wide_net(), size=32, name="wide")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    store = mine(model, ["1", "3"], photos, k=3, out=root / "store", progress=False)
    targets = [vital.Channel("3", c) for c in range(40)]
    res = vital.visualize(model, targets, [store.references("3", c, n=2) for c in range(40)], steps=2, warmup=1,
                          progress=False)
    res.save(root / "runs" / "layer3")
    found = circuit(model, "3", 5, store.references("3", 5, n=3), layers=["1"], depth=1, top=3)
    (root / "circ").mkdir()
    found.save(root / "circ" / "circuit.json")
    index = build_atlas(root / "site", [root / "runs", root / "store", root / "circ"], progress=False)
    return root, index


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.check: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("href", "src"):
            if a.get(key):
                self.links.append(a[key])
        if tag == "body" and "data-check" in a:
            self.check = a["data-check"]


def _parse(text: str) -> _Links:
    p = _Links()
    p.feed(text)
    return p


def test_every_page_link_and_image_resolves(site):
    root, index = site
    pages = sorted((root / "site").rglob("*.html"))
    layer_page = root / "site" / "layers" / "3.html"
    assert len(pages) == 1 + 2 + 8 + WIDE  # index, two layer pages, every neuron of both layers
    from urllib.parse import unquote

    for page in pages:
        for link in _parse(page.read_text()).links:
            assert not link.startswith(("http:", "https:", "/", "file:")), (page, link)
            target = (page.parent / unquote(link.split("#")[0])).resolve()
            assert target.is_file(), (page, link)
    cards = re.findall(r'<div class="card[^"]*" data-channel="(\d+)"', layer_page.read_text())
    assert [int(c) for c in cards] == list(range(WIDE))
    assert layer_page.read_text().count('loading="lazy"') == WIDE
    neuron = (root / "site" / "neurons" / "3" / "5.html").read_text()
    assert "Circuit" in neuron and "<svg" in neuron and "Top references" in neuron and "Run record" in neuron
    assert '"method": "vital"' in neuron.replace("&quot;", '"')


CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = 'eager'; });  // lazy ones below the fold too
  let waited = 0;
  const timer = setInterval(() => {
    waited += 50;
    if (!imgs.every(i => i.complete) && waited < 15000) return;
    clearInterval(timer);
    const input = document.getElementById('filter');
    input.value = '10-19,300';
    input.dispatchEvent(new Event('input'));
    const shown = [...document.querySelectorAll('.card:not(.hidden)')].map(c => +c.dataset.channel);
    const select = document.getElementById('sort');
    select.value = 'finalLoss';
    select.dispatchEvent(new Event('change'));
    const first = [...document.querySelectorAll('.card')].slice(0, 3).map(c => +c.dataset.channel);
    const paint = performance.getEntriesByType('paint').map(p => [p.name, p.startTime]);
    document.body.setAttribute('data-check', JSON.stringify({
      loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length, total: imgs.length, shown, first, paint}));
  }, 50);
});
</script>"""


def chromium_check(page: Path, tmp_path: Path, script: str = CHECK) -> dict:
    check = page.with_name("check.html")
    check.write_text(page.read_text().replace("</body>", script + "</body>"))
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--allow-file-access-from-files",
           f"--user-data-dir={tmp_path / 'chr'}", "--virtual-time-budget=20000", "--dump-dom", check.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True).stdout
    found = _parse(out).check
    check.unlink()
    assert found, f"the check script did not run; chromium printed: {out[:500]}"
    return json.loads(found)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing: apt-get install -y chromium")
def test_layer_page_in_headless_chromium(site, tmp_path):
    root, _ = site
    result = chromium_check(root / "site" / "layers" / "3.html", tmp_path)
    assert result["total"] == WIDE and result["loaded"] == WIDE
    assert result["shown"] == [*range(10, 20), 300]
    finals = {int(k): v for k, v in _final_losses(root).items()}
    assert result["first"] == sorted(finals, key=lambda c: -finals[c])[:3]  # highest final loss first


@pytest.fixture(scope="module")
def faith_site(site, tmp_path_factory):
    """The same sources with --faithfulness: each visualised neuron's path similarity."""
    root, _ = site
    out = tmp_path_factory.mktemp("faith") / "site"
    model = load_model(wide_net(), size=32, name="wide")
    build_atlas(out, [root / "runs", root / "store", root / "circ"], progress=False, faithfulness=True, model=model)
    return root, out, model


def test_faithfulness_on_neuron_pages_and_the_layer_table(faith_site):
    root, out, model = faith_site
    from vital.metrics.faithful_runs import natural_pool, score_runs

    want = {s.path.target: s.path for s in score_runs([root / "runs" / "layer3"], model, "cpu", natural_pool())}
    neuron = (out / "neurons" / "3" / "5.html").read_text()
    assert "Path similarity" in neuron and neuron.count('<svg class="path-plot"') == 1
    assert neuron.count("<polyline") == 3
    summary = want["3:5"].summary
    assert f"faithfulness {summary:.2f}" in neuron
    layer = (out / "layers" / "3.html").read_text()
    assert len(re.findall(r'data-faithfulness="[-0-9.e]+"', layer)) == sum(
        p.summary is not None for p in want.values())
    index = (out / "index.html").read_text()
    values = [p.summary for p in want.values() if p.summary is not None]
    assert f"<td>{sum(values) / len(values):.2f} (n = {len(values)})</td>" in index
    pages = {p: p.stat().st_mtime_ns for p in (out / "neurons").rglob("*.html")}
    cached = json.loads((out / "atlas.json").read_text())["faithfulness"]
    build_atlas(out, [root / "runs", root / "store", root / "circ"], progress=False, faithfulness=True, model=model)
    assert json.loads((out / "atlas.json").read_text())["faithfulness"] == cached
    assert all(p.stat().st_mtime_ns == t for p, t in pages.items())  # nothing changed: nothing rewritten


PLOT_CHECK = """<script>
window.addEventListener('load', () => {
  const svg = document.querySelector('svg.path-plot');
  const lines = svg ? [...svg.querySelectorAll('polyline')].map(p => [p.getAttribute('class'),
    p.getBBox().width, p.getTotalLength()]) : [];
  document.body.setAttribute('data-check', JSON.stringify({found: !!svg,
    width: svg ? svg.getBoundingClientRect().width : 0, lines}));
});
</script>"""


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing: apt-get install -y chromium")
def test_path_plot_renders_in_headless_chromium(faith_site, tmp_path):
    _, out, _ = faith_site
    result = chromium_check(out / "neurons" / "3" / "5.html", tmp_path, PLOT_CHECK)
    assert result["found"] and result["width"] > 100
    assert [c for c, _, _ in result["lines"]] == ["ceiling", "visual", "floor"]
    assert all(w > 50 and length > 50 for _, w, length in result["lines"])


def _final_losses(root: Path) -> dict[int, float]:
    rec = json.loads((root / "runs" / "layer3" / "record.json").read_text())
    return {t["channel"]: loss for t, loss in zip(rec["targets"], rec["final_loss"], strict=True)}


def test_rebuild_redoes_only_what_changed(site):
    root, _ = site
    pages = {p: p.stat().st_mtime_ns for p in (root / "site" / "neurons").rglob("*.html")}
    build_atlas(root / "site", [root / "runs", root / "store", root / "circ"], progress=False)
    assert all(p.stat().st_mtime_ns == t for p, t in pages.items())  # nothing changed: no neuron page rewritten
    circ = root / "circ" / "circuit.json"
    circ.write_text(circ.read_text())  # touched: only its neuron's page is redone
    build_atlas(root / "site", [root / "runs", root / "store", root / "circ"], progress=False)
    changed = [p for p, t in pages.items() if p.stat().st_mtime_ns != t]
    assert changed == [root / "site" / "neurons" / "3" / "5.html"]


def test_layer_kid_on_the_index(site, tmp_path):
    """--kid: each layer's KID of its visualizations against their own top patches, with the sample sizes, cached."""
    root, _ = site
    sources = [root / "runs", root / "store", root / "circ"]
    build_atlas(tmp_path / "site", sources, progress=False, kid=True)
    index = (tmp_path / "site" / "index.html").read_text()
    assert re.search(r"<td>-?\d+\.\d\d ± \d+\.\d\d \(n = 40 / 120\)</td>", index), index
    cached = json.loads((tmp_path / "site" / "atlas.json").read_text())["kid"]["3"]
    build_atlas(tmp_path / "site", sources, progress=False, kid=True)  # same files: the cached value
    assert json.loads((tmp_path / "site" / "atlas.json").read_text())["kid"]["3"] == cached


def test_circuit_shares_match_an_explicit_z_plus_computation():
    """conv - ReLU - conv - ReLU: the relevance of channel c of the second ReLU at the first, by z+ written out,
    summed over references and positions, as shares; and the graph names every source."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1), nn.ReLU()).eval()
    model = load_model(net, size=16, name="two")
    rng = np.random.default_rng(1)
    refs = from_images([Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(3)])
    found = circuit(model, "3", 2, refs, layers=["1"], depth=1, top=6)
    x = refs.load(model.transform())
    with torch.no_grad():
        a1 = net[1](net[0](x))
        a2 = net[3](net[2](a1))
        r2 = torch.zeros_like(a2)
        r2[:, 2] = a2[:, 2]
        w, b = net[2].weight.clamp(min=0), net[2].bias.clamp(min=0)
        z = F.conv2d(a1, w, b, padding=1) + 1e-5
        r1 = a1 * F.conv_transpose2d(r2 / z, w, padding=1)
    per_channel = r1.sum(dim=(0, 2, 3)).double()
    want = per_channel / per_channel.sum()
    got = {s.channel: s.share for s in found.sources["1"]}
    assert sorted(got, key=lambda c: -got[c]) == torch.argsort(want, descending=True).tolist()
    for c, share in got.items():
        assert share == pytest.approx(float(want[c]), rel=1e-4, abs=1e-7)
    drawing = svg(found.as_dict())
    assert drawing.count("<rect") == 1 + 6 and drawing.count("<line") == 6
