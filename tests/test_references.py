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


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16"])
def test_modes_are_converted(tmp_path, mode):
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    (Image.fromarray(np.full((4, 4), 4000, np.uint16)) if mode == "I;16" else _img(mode)).save(path)
    assert load_rgb(path).mode == "RGB"


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
    from vital.references.spec import ReferenceSpec
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
