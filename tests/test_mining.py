"""`mine` against a brute-force pass, resume after interruption, mismatch errors, references and grids."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms.functional import to_pil_image

import vital.references.mining as mining
from vital.errors import VitalError
from vital.models import load_model
from vital.references.images import list_images, load_rgb
from vital.references.mining import MiningStore, mine

LAYERS = ["1", "4", "5"]
# Hand-derived fields of tiny_net (see test_receptive_field.small_net for the method): layer "1" (after conv3x3 s1
# p1): r=3, j=1, c=0; "4" (after maxpool2 and conv3x3 s2 p1): r=8, j=4, c=0.5; "5" (one more conv3x3): r=16, j=4,
# c=0.5. Patch side = clamp(r, 2j, 32); box start = clamp(floor(c + 0.5 - side/2 + 0.5) + j*pos, 0, 32 - side).
HAND_BOX = {"1": (3, 1, lambda p: p - 1), "4": (8, 4, lambda p: 4 * p - 3), "5": (16, 4, lambda p: 4 * p - 7)}


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 6, 3, 2, 1), nn.ReLU(),
                         nn.Conv2d(6, 5, 3, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 10))


def tiny_model(name: str = "tiny"):
    return load_model(tiny_net(), mean=(0.5, 0.4, 0.3), std=(0.25, 0.25, 0.25), size=32, name=name)


@pytest.fixture
def folder(tmp_path):
    """15 readable images (noise with a bright blob, one grayscale, one RGBA, some in a sub-folder, one an exact
    copy of another so that scores tie) and one unreadable file."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        arr = rng.integers(0, 120, (36 + i, 44, 3), dtype=np.uint8)
        y, x = rng.integers(0, 30, 2)
        arr[y:y + 6, x:x + 6] = rng.integers(150, 255, 3)
        Image.fromarray(arr).save(root / ("sub" if i % 4 == 0 else "") / f"img{i:02d}.png")
    shutil.copy(root / "img05.png", root / "sub" / "tie.png")
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8), mode="L").save(root / "gray.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8), mode="RGBA").save(root / "rgba.png")
    (root / "broken.jpg").write_bytes(b"this is not a jpeg")
    return root


def brute_force(model, root, layers):
    """Every activation in memory, one image at a time, via plain forward hooks; explicit sorts."""
    files = [p.relative_to(root).as_posix() for p in list_images(root)]
    acts = {layer: {} for layer in layers}
    modules = dict(model.module.named_modules())
    grabbed = {}
    hooks = [modules[layer].register_forward_hook(
        lambda _m, _i, out, layer=layer: grabbed.__setitem__(layer, out[0].numpy().copy())) for layer in layers]
    for i, f in enumerate(files):
        try:
            x = model.transform()(load_rgb(root / f))[None]
        except OSError:
            continue
        with torch.no_grad():
            model.module(x)
        for layer in layers:
            acts[layer][i] = grabbed[layer]
    for h in hooks:
        h.remove()
    return files, acts


def expected_lists(acts_layer, channel, n):
    """[(image index, score, (h, w) of the first maximum)] for one channel, best first, ties to the earlier image."""
    rows = []
    for i, a in acts_layer.items():
        flat = a[channel].ravel()
        pos = int(np.argmax(flat))
        rows.append((i, float(flat[pos]), divmod(pos, a.shape[2])))
    return sorted(rows, key=lambda r: (-r[1], r[0]))[:n]


def test_matches_brute_force(folder, tmp_path):
    model = tiny_model()
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        store = mine(model, LAYERS, folder, k=4, n_images=6, out=tmp_path / "store", batch_size=4, workers=1,
                     progress=False)
    files, acts = brute_force(model, folder, LAYERS)
    assert store.files == files
    ties = 0
    assert store.index["skipped"] == ["broken.jpg"] and store.index["images_processed"] == len(files)
    for layer in LAYERS:
        side, stride, start = HAND_BOX[layer]
        t = store.tensors[layer]
        channels = next(iter(acts[layer].values())).shape[0]
        assert t["image_index"].shape == (channels, 6) and t["patch_boxes"].shape == (channels, 4, 4)
        for c in range(channels):
            want = expected_lists(acts[layer], c, 6)
            assert t["image_index"][c].tolist() == [r[0] for r in want]
            assert torch.allclose(t["image_scores"][c], torch.tensor([r[1] for r in want]), atol=1e-5)
            assert t["patch_index"][c].tolist() == [r[0] for r in want[:4]]
            boxes = [[min(max(start(w), 0), 32 - side), min(max(start(h), 0), 32 - side)] for _, _, (h, w) in want[:4]]
            assert t["patch_boxes"][c, :, :2].tolist() == boxes
            assert (t["patch_boxes"][c, :, 2:] - t["patch_boxes"][c, :, :2]).eq(side).all()
            assert len(set(t["image_index"][c].tolist())) == 6  # distinct images
            ties += {files.index("img05.png"), files.index("sub/tie.png")} <= set(t["image_index"][c].tolist())
    assert ties  # the exact copy ties with its original in some lists: the earlier file must come first
    # the store on disk holds the same
    again = MiningStore.load(tmp_path / "store")
    for layer in LAYERS:
        for key, value in store.tensors[layer].items():
            assert torch.equal(again.tensors[layer][key], value)
    assert again.index["layers"]["4"]["receptive_field"] == {"stride": [4, 4], "size": [8, 8], "offset": [0.5, 0.5],
                                                             "is_global": False, "effective": None}


def read_store(path):
    index = json.loads((path / "index.json").read_text())
    for key in ("created", "updated"):
        index.pop(key)
    return index, torch.load(path / "topk.pt", weights_only=True), json.loads((path / "files.json").read_text())


def test_resume_after_interruption_equals_uninterrupted(folder, tmp_path, monkeypatch):
    model = tiny_model()
    kw = dict(k=3, n_images=5, batch_size=3, progress=False, checkpoint_every=1)
    with pytest.warns(UserWarning):
        mine(model, LAYERS, folder, out=tmp_path / "full", **kw)

    calls = {"n": 0}

    def failing_load(path):
        calls["n"] += 1
        if calls["n"] == 8:  # in the third batch
            raise RuntimeError("power cut")
        return load_rgb(path)

    monkeypatch.setattr(mining, "load_rgb", failing_load)
    with pytest.raises(RuntimeError, match="power cut"):
        mine(model, LAYERS, folder, out=tmp_path / "cut", **kw)
    index = json.loads((tmp_path / "cut" / "index.json").read_text())
    assert not index["complete"] and index["images_processed"] == 6
    with pytest.raises(VitalError, match="incomplete"):
        MiningStore.load(tmp_path / "cut")

    monkeypatch.setattr(mining, "load_rgb", load_rgb)
    calls["n"] = 0
    monkeypatch.setattr(mining, "load_rgb", lambda p: (calls.__setitem__("n", calls["n"] + 1), load_rgb(p))[1])
    with pytest.warns(UserWarning):
        mine(model, LAYERS, folder, out=tmp_path / "cut", **kw)
    assert calls["n"] == 16 - 6  # only the rest was read
    full_index, full_state, full_files = read_store(tmp_path / "full")
    cut_index, cut_state, cut_files = read_store(tmp_path / "cut")
    assert cut_index == full_index and cut_files == full_files
    assert cut_state.keys() == full_state.keys()
    for key in ("seen", "skipped", "complete"):
        assert cut_state[key] == full_state[key]
    for layer in LAYERS:
        for a, b in zip(cut_state["lists"][layer], full_state["lists"][layer], strict=True):
            assert torch.equal(a, b)
        for key, value in full_state["final"][layer].items():
            assert torch.equal(cut_state["final"][layer][key], value)
    # complete: calling again only loads it
    calls["n"] = 0
    mine(model, LAYERS, folder, out=tmp_path / "cut", **kw)
    assert calls["n"] == 0


def test_mismatches_are_refused(folder, tmp_path):
    out = tmp_path / "store"
    with pytest.warns(UserWarning):
        store = mine(tiny_model(), ["4"], folder, k=2, out=out, batch_size=8, progress=False)
    with pytest.raises(VitalError, match=r"mined for tiny \(weights custom\), not other .*use another --out"):
        mine(tiny_model("other"), ["4"], folder, k=2, out=out, progress=False)
    with pytest.raises(VitalError, match=r"for layers \['4'\], not \['4', '5'\]"):
        mine(tiny_model(), ["4", "5"], folder, k=2, out=out, progress=False)
    with pytest.raises(VitalError, match="with k=2"):
        mine(tiny_model(), ["4"], folder, k=3, out=out, progress=False)
    other = load_model(tiny_net(), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), size=32, name="tiny")
    with pytest.raises(VitalError, match="preprocessing"):
        mine(other, ["4"], folder, k=2, out=out, progress=False)
    shutil.copy(folder / "gray.png", folder / "gray2.png")
    with pytest.raises(VitalError, match="another image set"):
        mine(tiny_model(), ["4"], folder, k=2, out=out, progress=False)

    store.check(tiny_model(), "4", 5)
    with pytest.raises(VitalError, match="mined for tiny .* not other"):
        store.check(tiny_model("other"), "4")
    with pytest.raises(VitalError, match="no layer '5'.*vital mine --layers 5"):
        store.check(tiny_model(), "5")
    with pytest.raises(VitalError, match="channel 6 is out of range.*6 channels"):
        store.check(tiny_model(), "4", 6)
    with pytest.raises(VitalError, match="channel 6 is out of range"):
        store.top_images("4", 6)

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(VitalError, match="not a mining store"):
        mine(tiny_model(), ["4"], folder, out=tmp_path / "busy", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VitalError, match="holds no images"):
        mine(tiny_model(), ["4"], tmp_path / "empty", progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(VitalError, match="none of the 1 images"):
        mine(tiny_model(), ["4"], tmp_path / "bad", progress=False)


def test_references_and_grid(folder, tmp_path):
    model = tiny_model()
    with pytest.warns(UserWarning):
        store = mine(model, ["4", "5"], folder, k=3, n_images=5, out=tmp_path / "store", batch_size=16,
                     progress=False, grid=True)
    for layer in ("4", "5"):
        with Image.open(tmp_path / "store" / f"grid_{layer}.png") as im:
            assert im.size == (8 * 64, min(16, store.index["layers"][layer]["channels"]) * 64)
    path = store.grid("5", [4, 0, 2], tmp_path / "g.png", n=4, tile=16)
    with Image.open(path) as im:
        assert im.size == (64, 48)
        # column 4 of every row is padding: only k=3 patches exist
        assert np.asarray(im)[:, 48:].max() == 128 == np.asarray(im)[:, 48:].min()

    refs = store.references("5", 2, kind="images")
    assert [p.relative_to(folder).as_posix() for p in refs.files] == [f for f, _ in store.top_images("5", 2)]
    assert len(refs) == 5 and len(store.references("5", 2, "images", n=2)) == 2
    patches = store.references("5", 2, kind="patches")
    assert len(patches.images) == 3
    for (name, crop), (file, _, (left, top, right, bottom)) in zip(patches.images, store.top_patches("5", 2),
                                                                   strict=True):
        assert name.startswith(file) and crop.size == (32, 32)
        # independently: the model's tensor preprocessing, de-normalised, sliced, resized
        x01 = model.denormalize(model.transform()(load_rgb(folder / file))[None])[0].clamp(0, 1)
        want = to_pil_image(x01[:, top:bottom, left:right]).resize((32, 32), Image.Resampling.BILINEAR)
        diff = np.abs(np.asarray(crop, dtype=float) - np.asarray(want, dtype=float))
        assert diff.mean() < 2.0
    with pytest.raises(VitalError, match="unknown reference kind"):
        store.references("5", 2, kind="crops")


class Tensors(Dataset):
    """Model-space tensors with their file names as ids."""

    def __init__(self, model, root):
        self.items = []
        for p in list_images(root):
            try:
                self.items.append((model.transform()(load_rgb(p)), p.relative_to(root).as_posix()))
            except OSError:
                continue

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_dataset_input_gives_the_same_ranking(folder, tmp_path):
    model = tiny_model()
    with pytest.warns(UserWarning):
        by_folder = mine(model, ["4"], folder, k=3, batch_size=5, progress=False)
    data = Tensors(model, folder)
    by_data = mine(model, ["4"], data, k=3, batch_size=5, out=tmp_path / "ds", progress=False)
    assert by_data.index["dataset"] == {"kind": "dataset", "class": "Tensors", "count": 15}
    for c in range(6):
        assert [f for f, _ in by_data.top_images("4", c)] == [f for f, _ in by_folder.top_images("4", c)]
        assert [b for *_, b in by_data.top_patches("4", c)] == [b for *_, b in by_folder.top_patches("4", c)]
    reopened = MiningStore.load(tmp_path / "ds", images=data)
    (name, crop), = reopened.references("4", 0, kind="patches", n=1).images
    (_, ref_crop), = by_folder.references("4", 0, kind="patches", n=1).images
    assert np.abs(np.asarray(crop, dtype=float) - np.asarray(ref_crop, dtype=float)).mean() < 2.0
    with pytest.raises(VitalError, match="mined from a Dataset"):
        MiningStore.load(tmp_path / "ds").references("4", 0, kind="patches")


@pytest.mark.integration
def test_efficientnet_lite0_on_real_photos(tmp_path):
    import skimage

    data = os.path.join(os.path.dirname(skimage.__file__), "data")
    root = tmp_path / "photos"
    root.mkdir()
    for f in ("chelsea.png", "coffee.png", "camera.png", "motorcycle_left.png", "rocket.jpg", "astronaut.png"):
        shutil.copy(os.path.join(data, f), root / f)
    model = load_model("efficientnet_lite0")
    store = mine(model, ["_blocks.4"], root, k=2, n_images=3, batch_size=3, progress=False)
    assert store.index["layers"]["_blocks.4"]["receptive_field"]["stride"] == [8, 8]

    # independently: each photo alone through the full network, spatial max read from a hook
    files = sorted(os.listdir(root))
    grabbed = []
    hook = model.module._blocks[4].register_forward_hook(lambda _m, _i, out: grabbed.append(out[0]))
    with torch.no_grad():
        for f in files:
            model.module(model.transform()(load_rgb(root / f))[None])
    hook.remove()
    maxima = torch.stack([a.flatten(1).max(1).values for a in grabbed])  # (images, C)
    assert store.tensors["_blocks.4"]["image_index"].shape == (maxima.shape[1], 3)
    for c in range(maxima.shape[1]):
        top = [f for f, _ in store.top_images("_blocks.4", c)]
        assert top[0] == files[int(maxima[:, c].argmax())]
        assert torch.allclose(store.tensors["_blocks.4"]["image_scores"][c],
                              maxima[:, c].sort(descending=True).values[:3], rtol=1e-4, atol=1e-4)
    patches = store.references("_blocks.4", 0, kind="patches")
    assert [im.size for _, im in patches.images] == [(224, 224)] * 2


def test_effective_patches_for_a_layer_that_sees_the_whole_input(folder, tmp_path):
    """A deep layer whose theoretical field covers the input gets patches of its effective field: smaller than
    the image, inside it, and around the unit the channel peaks at (checked by brute force)."""
    import torchvision

    torch.manual_seed(0)
    model = load_model(torchvision.models.resnet18(weights=None), size=128, name="r18")
    store = mine(model, ["layer4"], folder, k=4, out=tmp_path / "store", progress=False)
    field = store.index["layers"]["layer4"]["receptive_field"]
    assert field["is_global"] and field["effective"] is not None
    side = field["effective"][0]
    assert 2 * 32 <= side < 128  # two strides at least, less than the whole image
    boxes = store.tensors["layer4"]["patch_boxes"]
    assert ((boxes[..., 2] - boxes[..., 0]) == side).all() and (boxes[..., :2] >= 0).all()
    assert (boxes[..., 2:] <= 128).all()
    _, acts = brute_force(model, folder, ["layer4"])
    offset, stride = field["offset"], field["stride"]
    for c in range(3):
        for j, i in enumerate(store.tensors["layer4"]["patch_index"][c].tolist()):
            act = acts["layer4"][i][c]
            h, w = divmod(int(np.argmax(act)), act.shape[-1])
            # the unit's centre, clamped into the image (a random network's may sit just outside)
            cy, cx = (min(max(offset[a] + stride[a] * p, 0), 127) for a, p in ((0, h), (1, w)))
            left, top, right, bottom = boxes[c, j].tolist()
            assert left <= cx < right and top <= cy < bottom
    theoretical = mine(model, ["layer4"], folder, k=4, progress=False, patch="theoretical")
    assert (theoretical.tensors["layer4"]["patch_boxes"][..., 2] == 128).all()  # the whole image
    with pytest.raises(VitalError, match="unknown patch rule"):
        mine(model, ["layer4"], folder, k=4, progress=False, patch="erf")


def test_effective_fields_are_measured_once_per_model_weights_and_data(folder, tmp_path, monkeypatch):
    """Mining the same data again takes the effective field from the disk cache (no gradient pass); other weights
    or a damaged entry measure it again, and the cached field equals the measured one."""
    import torchvision

    from vital.references import receptive_field as rf_module

    monkeypatch.setenv("VITAL_CACHE", str(tmp_path / "cache"))  # an empty cache, whatever ran before
    calls = []
    measure = rf_module.effective_field
    monkeypatch.setattr(rf_module, "effective_field", lambda *a, **k: calls.append(a[1]) or measure(*a, **k))
    torch.manual_seed(0)
    model = load_model(torchvision.models.resnet18(weights=None), size=128, name="r18")
    first = mine(model, ["layer4", "layer3"], folder, k=2, progress=False, patch="effective")
    assert sorted(calls) == ["layer3", "layer4"]
    again = mine(model, ["layer4", "layer3"], folder, k=2, progress=False, patch="effective")
    assert sorted(calls) == ["layer3", "layer4"]  # nothing measured
    for n in ("layer4", "layer3"):
        assert again.index["layers"][n]["receptive_field"] == first.index["layers"][n]["receptive_field"]
        assert torch.equal(again.tensors[n]["patch_boxes"], first.tensors[n]["patch_boxes"])
    with torch.no_grad():
        model.module.layer4[1].conv2.weight.mul_(2)  # other weights: measured again
    mine(model, ["layer4"], folder, k=2, progress=False)
    assert calls.count("layer4") == 2
    cache = rf_module.cache_path()
    entries = json.loads(cache.read_text())
    for key in entries:
        if key.startswith("effective:"):
            entries[key] = {"side": "wide"}  # damaged: measured again, not a crash
    cache.write_text(json.dumps(entries))
    mine(model, ["layer4"], folder, k=2, progress=False)
    assert calls.count("layer4") == 3
    first_file = list_images(folder)[0]
    os.utime(first_file, ns=(1, 1))  # a sample file changed (by its time): measured again
    mine(model, ["layer4"], folder, k=2, progress=False)
    assert calls.count("layer4") == 4


def test_distinct_channels_by_strength_and_source_overlap():
    """Channel strengths k-th/1st: c0 0.9, c1 0.8, c2 0.5, c3 0.95 (but c3's sources are c0's), c4 0 (dead)."""
    scores = torch.tensor([[10.0, 9.5, 9.0], [5.0, 4.5, 4.0], [2.0, 1.5, 1.0], [20.0, 19.5, 19.0], [0.0, 0.0, 0.0]])
    index = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 0], [1, 2, 0], [0, 1, 2]])
    files = ["a_1.png", "a_2.png", "b_1.png", "c_1.png", "d_1.png", "e_1.png", "f_1.png", "g_1.png"]
    store = MiningStore({"layers": {"L": {"channels": 5}}, "dataset": {"kind": "dataset"}},
                        {"L": {"patch_scores": scores, "patch_index": index}}, files)
    assert [c for c, _ in store.distinct_channels("L", 5)] == [3, 1, 2]  # c0 and c4 share their files with c3
    picked = store.distinct_channels("L", 2, k=2, overlap=0.5)
    assert picked[0][0] == 3 and picked[0][1] == pytest.approx(19.5 / 20) and picked[1][0] == 0  # 1/3 <= 0.5
    # grouped by photo ("a_1", "a_2" -> "a"): c2 {f, g, a} overlaps c3 {a, b} by 1/4, allowed at 0.25
    grouped = store.distinct_channels("L", 5, overlap=0.25, group=lambda f: f.split("_")[0])
    assert [c for c, _ in grouped] == [3, 1, 2]


def test_a_store_with_other_patch_boxes_is_refused_with_the_reason(folder, tmp_path):
    model = tiny_model()
    mine(model, ["4"], folder, k=2, out=tmp_path / "store", progress=False)
    with pytest.raises(VitalError, match=r"other shapes or patch boxes for \['4'\]"):
        mine(model, ["4"], folder, k=2, out=tmp_path / "store", progress=False, patch="effective")
