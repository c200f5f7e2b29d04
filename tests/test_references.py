import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from vital.errors import VitalError
from vital.references.images import from_class_folder, from_files, from_folder, load_rgb
from vital.references.photos import photo_references


def _img(mode: str, size=(20, 16)) -> Image.Image:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return rgb.convert(mode)


@pytest.fixture
def imagenet_like(tmp_path):
    root = tmp_path / "train"
    for wnid in ("n01440764", "n01443537"):
        (root / wnid).mkdir(parents=True)
    a = root / "n01440764"
    _img("RGB").save(a / "rgb.jpg")
    _img("L").save(a / "gray.png")
    _img("CMYK").save(a / "cmyk.jpg")
    _img("P").save(a / "palette.png")
    _img("RGBA").save(a / "rgba.png")
    (a / "broken.jpg").write_bytes(b"not an image")
    for i in range(3):
        _img("RGB").save(root / "n01443537" / f"{i}.png")
    return root


def _over_white(rgb, alpha):
    """Alpha compositing on white, computed here: c * a + 255 * (1 - a)."""
    a = np.asarray(alpha, float)[..., None] / 255
    return np.asarray(rgb, float) * a + 255 * (1 - a)


def _palette(transparent: int | None = None) -> Image.Image:
    im = Image.new("P", (3, 1))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    im.putdata([2, 0, 1])
    if transparent is not None:
        im.info["transparency"] = transparent
    return im


def _cmyk() -> Image.Image:
    im = Image.new("CMYK", (3, 1))
    im.putdata([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255)])
    return im


RGBA = np.array([[[200, 100, 50, 128], [10, 20, 30, 0], [10, 20, 30, 255]]], np.uint8)
LA = np.array([[[100, 128], [0, 0], [0, 255]]], np.uint8)
GRAY = np.array([[0, 77, 255]], np.uint8)
WORDS = np.array([[0, 4000, 32768, 65535]], np.uint16)

MODES = {  # mode: (image, file suffix, expected RGB pixels)
    "L": (lambda: Image.fromarray(GRAY, "L"), ".png", np.repeat(GRAY[..., None], 3, -1)),
    "CMYK": (_cmyk, ".tif", [[[255, 255, 255], [0, 255, 255], [0, 0, 0]]]),  # white, cyan, black
    "P": (_palette, ".png", [[[0, 0, 255], [255, 0, 0], [0, 255, 0]]]),
    "P+transparency": (lambda: _palette(transparent=1), ".png", [[[0, 0, 255], [255, 0, 0], [255, 255, 255]]]),
    "RGBA": (lambda: Image.fromarray(RGBA, "RGBA"), ".png", _over_white(RGBA[..., :3], RGBA[..., 3])),
    "LA": (lambda: Image.fromarray(LA, "LA"), ".png", _over_white(np.repeat(LA[..., :1], 3, -1), LA[..., 1])),
    "I;16": (lambda: Image.fromarray(WORDS), ".tif", np.repeat(WORDS[..., None] / 256, 3, -1)),  # 16 bits -> 8
}


@pytest.mark.parametrize("mode", list(MODES))
def test_modes_are_converted(tmp_path, mode):
    """Every mode becomes RGB with the right pixels: alpha composited on white, 16-bit values scaled by 1/256."""
    make, suffix, expected = MODES[mode]
    path = tmp_path / f"x{suffix}"
    make().save(path, **({"transparency": 1} if mode == "P+transparency" else {}))
    with Image.open(path) as raw:
        assert raw.mode.startswith(mode.split("+")[0])  # the file really is in that mode
    im = load_rgb(path)
    assert im.mode == "RGB"
    np.testing.assert_allclose(np.asarray(im, float), np.asarray(expected, float), atol=1)


def test_class_by_index_and_wnid(imagenet_like):
    by_index = from_class_folder(imagenet_like, 0, n=None)
    by_wnid = from_class_folder(imagenet_like, "n01440764", n=None)
    assert by_index.files == by_wnid.files and len(by_index) == 6
    assert from_class_folder(imagenet_like, 1, n=None).source.endswith("n01443537")


def test_unreadable_skipped_with_warning_others_converted(imagenet_like):
    from torchvision import transforms as T

    refs = from_class_folder(imagenet_like, 0, n=None)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        t = refs.load(T.Compose([T.Resize((8, 8)), T.ToTensor()]))
    assert t.shape == (5, 3, 8, 8)


def test_seeded_sampling(imagenet_like):
    a = from_class_folder(imagenet_like, 0, n=3, seed=1).files
    assert a == from_class_folder(imagenet_like, 0, n=3, seed=1).files
    assert len(a) == 3
    assert any(from_class_folder(imagenet_like, 0, n=3, seed=s).files != a for s in range(2, 8))


def test_fewer_than_asked_is_a_warning(imagenet_like):
    from torchvision import transforms as T

    refs = from_class_folder(imagenet_like, 1, n=50)
    with pytest.warns(UserWarning, match="only 3 readable"):
        refs.load(T.Compose([T.Resize((8, 8)), T.ToTensor()]))


def test_errors(imagenet_like, tmp_path):
    with pytest.raises(VitalError, match="out of range.*2 class folders"):
        from_class_folder(imagenet_like, 5)
    with pytest.raises(VitalError, match="Closest: n01440764"):
        from_class_folder(imagenet_like, "n01440765")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VitalError, match="holds no images"):
        from_folder(tmp_path / "empty")
    with pytest.raises(VitalError, match="does not exist"):
        from_folder(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"junk")
    with pytest.raises(VitalError, match="could be read"):
        from_folder(bad).load(lambda im: torch.zeros(3, 2, 2))


def test_file_list_keeps_order_and_drops_duplicates(imagenet_like, tmp_path):
    files = sorted((imagenet_like / "n01443537").iterdir())
    listing = tmp_path / "topk.txt"
    listing.write_text("\n".join(str(p) for p in [files[2], files[0], files[2], files[1]]))
    assert from_files(listing).files == [files[2], files[0], files[1]]
    assert from_files(listing, n=2).files == [files[2], files[0]]


def test_photo_references_are_seeded_views():
    a, b = photo_references(967, n=4, seed=0), photo_references(967, n=4, seed=0)
    assert len(a) == 4 and [h["sha256"] for h in a.describe()] == [h["sha256"] for h in b.describe()]
    with pytest.raises(VitalError, match="no offline photo"):
        photo_references(1)


def test_reference_spec_reads_the_refs_flag(imagenet_like, tmp_path):
    from vital.references.refs_rule import ReferenceSpec
    from vital.targets import Channel, Class

    assert ReferenceSpec.flag_fields("offline") == {"source": "offline"}
    assert ReferenceSpec.flag_fields(str(imagenet_like))["source"] == "class-folder"
    assert ReferenceSpec.flag_fields(str(imagenet_like), flat=True)["source"] == "folder"
    assert ReferenceSpec.flag_fields(str(imagenet_like), classes=False)["source"] == "folder"
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "index.json").write_text("{}")
    assert ReferenceSpec.flag_fields(str(tmp_path / "store"))["source"] == "store"
    refs = ReferenceSpec.from_flag(str(imagenet_like), n=2).resolve([Class(1), Class(0)], seed=0)
    assert [r.source.rsplit("/", 1)[-1] for r in refs] == ["n01443537", "n01440764"] and len(refs[0]) == 2
    shared = ReferenceSpec.from_flag(str(imagenet_like), flat=True).resolve([Class(0), Class(1)])
    assert shared[0] is shared[1]  # one set, loaded once per run
    with pytest.raises(VitalError, match="do not apply to layer1:3"):
        ReferenceSpec.from_flag("offline").resolve([Channel("layer1", 3)])
    with pytest.raises(VitalError, match="unknown reference source"):
        ReferenceSpec(source="web")


def test_every_constructor_records_a_structured_origin(imagenet_like, tmp_path):
    from conftest import noise_folder, tiny_sequential

    from vital.references.images import from_images
    from vital.references.mining import mine

    root = str(imagenet_like.resolve())
    assert from_class_folder(imagenet_like, 1, n=2, seed=3).origin == {
        "kind": "class_folder", "root": root, "class": 1, "n": 2, "seed": 3}
    assert from_class_folder(imagenet_like, "n01443537", n=None).origin["class"] == "n01443537"
    folder = imagenet_like / "n01443537"
    assert from_folder(folder, n=2, seed=1).origin == {"kind": "folder", "path": str(folder.resolve()), "n": 2,
                                                       "seed": 1}
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in sorted(folder.iterdir())))
    assert from_files(listing).origin == {"kind": "files", "list": str(listing.resolve())}
    assert from_files(sorted(folder.iterdir())).origin == {"kind": "files", "list": None}
    assert from_images([_img("RGB")]).origin == {"kind": "memory"}
    photos = photo_references(282, n=3, seed=2)
    assert photos.origin == {"kind": "photo", "class": 282, "name": "chelsea.png", "n": 3, "seed": 2}
    assert photos.source == "skimage:chelsea.png (3 views, seed 2)"  # the line for people stays
    store = mine(tiny_sequential(), ["4"], noise_folder(tmp_path / "imgs", 4), k=2, out=tmp_path / "store",
                 progress=False)
    for kind in ("images", "patches"):
        refs = store.references("4", 5, kind=kind, n=2)
        assert refs.origin == {"kind": "mined", "store": str((tmp_path / "store").resolve()), "layer": "4",
                               "channel": 5, "ref_kind": kind, "n": 2}
    assert json.loads(json.dumps(refs.origin)) == refs.origin  # fit for the JSON record


def test_photo_corpus_is_seeded_square_crops_of_every_offline_photo(tmp_path):
    from PIL import Image as PILImage

    from vital.references.photos import offline_photo_files, photo_corpus

    photos = offline_photo_files()
    names = {os.path.basename(p) for p in photos}
    assert {"chelsea.png", "coffee.png", "grace_hopper.jpg"} <= names  # scikit-image and matplotlib
    scales = ((1.0, 1), (0.5, 2))
    folder = photo_corpus(tmp_path / "a", size=32, seed=1, scales=scales)
    files = sorted(os.listdir(folder))
    assert len(files) == 3 * len(photos)
    with PILImage.open(os.path.join(folder, files[0])) as im:
        assert im.size == (32, 32)
    again = photo_corpus(tmp_path / "b", size=32, seed=1, scales=scales)
    first = [open(os.path.join(folder, f), "rb").read() for f in files[:4]]
    assert first == [open(os.path.join(again, f), "rb").read() for f in files[:4]]
    whole = next(f for f in files if f.startswith("chelsea_s100"))
    ref = PILImage.open(photos[[os.path.basename(p) for p in photos].index("chelsea.png")]).convert("RGB")
    side = min(ref.size)
    # the whole-photo crop is a full-height square somewhere along the photo's width, resized
    crops = [np.asarray(ref.crop((x, 0, x + side, side)).resize((32, 32), PILImage.BICUBIC), dtype=float)
             for x in range(ref.size[0] - side + 1)]
    got = np.asarray(PILImage.open(os.path.join(folder, whole)).convert("RGB"), dtype=float)
    assert min(np.abs(c - got).max() for c in crops) <= 1
