"""Mining with JPEG decoding on the model's device (here the CPU: the same torchvision.io code path that CUDA runs
with nvJPEG), against PIL and the model's own transform."""

import numpy as np
import pytest
import torch
from PIL import Image

from vital.errors import VitalError
from vital.models import load_model
from vital.references.decode import DeviceDecoder, RawFolder, collate
from vital.references.images import list_images, load_rgb
from vital.references.mining import mine


def _photo(rng, h: int, w: int) -> Image.Image:
    """A smooth, photo-like picture (JPEG artefacts stay small), with a bright blob at a random place."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + rng.uniform(0, 6)), np.cos(5 * yy + rng.uniform(0, 6)), xx * yy], -1)
    cy, cx = rng.uniform(0.2, 0.8, 2)
    base += 2 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.01)[..., None]
    return Image.fromarray((255 * (base - base.min()) / np.ptp(base)).astype(np.uint8))


@pytest.fixture
def jpegs(tmp_path):
    root = tmp_path / "jpegs"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        _photo(rng, 90 + 7 * i, 120 - 3 * i).save(root / f"p{i}.jpg", quality=95)
    _photo(rng, 80, 100).save(root / "flat.png")  # not a JPEG: through PIL
    _photo(rng, 100, 70).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    rotated = _photo(rng, 60, 110)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rotated.save(root / "exif.jpg", quality=95, exif=exif)
    (root / "broken.jpg").write_bytes((root / "p0.jpg").read_bytes()[:200])  # truncated: unreadable
    return root


def test_device_decoding_matches_the_models_pil_transform(jpegs):
    model = load_model("efficientnet_lite0", device="cpu")
    files = [p.relative_to(jpegs).as_posix() for p in list_images(jpegs)]
    tf = model.transform()
    data = RawFolder(jpegs, files, tf, model.size)
    payloads, idx, ok, names = collate([data[i] for i in range(len(data))])
    x, decoded = DeviceDecoder(model)(payloads)
    assert x.shape == (len(files), 3, model.size, model.size) and x.device.type == "cpu"
    kinds = dict(zip(names, (p[0] for p in payloads), strict=True))
    assert kinds["flat.png"] == "pixels" and kinds["p0.jpg"] == "jpeg"
    std = torch.tensor(model.std).view(3, 1, 1)
    for i, name in enumerate(names):
        if name == "broken.jpg":
            assert not bool(ok[i] & decoded[i])
            continue
        assert bool(ok[i] & decoded[i]), name
        expected = tf(load_rgb(jpegs / name))  # PIL: exif orientation applied, CMYK converted
        diff = ((x[i] - expected) * std).abs()  # in [0, 1] pixel units
        assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.2, (name, float(diff.mean()), float(diff.max()))


def test_mining_with_device_decoding_finds_the_same_top_images(jpegs, tmp_path):
    model = load_model("efficientnet_lite0", device="cpu")
    with pytest.warns(UserWarning, match="broken.jpg"):
        pil = mine(model, ["_blocks.4"], jpegs, k=3, out=tmp_path / "pil", progress=False, batch_size=4)
    with pytest.warns(UserWarning, match="broken.jpg"):
        dev = mine(model, ["_blocks.4"], jpegs, k=3, out=tmp_path / "dev", progress=False, batch_size=4,
                   decode="device")
    assert dev.index["preprocessing"]["decode"] == "device" and "decode" not in pil.index["preprocessing"]
    a, b = pil.tensors["_blocks.4"], dev.tensors["_blocks.4"]
    relative = (a["image_scores"] - b["image_scores"]).abs() / a["image_scores"].abs().clamp_min(0.1)
    assert float((relative < 0.1).float().mean()) >= 0.95  # decoders and resize filters round differently
    agree = (a["image_index"][:, 0] == b["image_index"][:, 0]).float().mean()
    assert agree >= 0.9  # the best image of (almost) every channel is the same
    with pytest.raises(VitalError, match="other"):  # a store mined one way is not resumed the other way
        mine(model, ["_blocks.4"], jpegs, k=3, out=tmp_path / "dev", progress=False, decode="pil")


def test_device_decoding_is_refused_where_it_does_not_apply(jpegs):
    model = load_model("efficientnet_lite0", device="cpu")
    with pytest.raises(VitalError, match="unknown decoder 'gpu'"):
        mine(model, ["_blocks.4"], jpegs, k=2, progress=False, decode="gpu")
    tensors = torch.utils.data.TensorDataset(torch.zeros(2, 3, 224, 224))
    with pytest.raises(VitalError, match="JPEG files of a folder"):
        mine(model, ["_blocks.4"], tensors, k=2, progress=False, decode="device")
