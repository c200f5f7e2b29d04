"""Mining from collections that are not folders: WebDataset tar shards and a Hugging Face dataset saved to disk
give the same store as the same images in a folder, resume, and find their references' pixels again."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from vital.errors import VitalError
from vital.references.mining import MiningStore, mine


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)) for _ in range(7)]


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _shards(images, folder):
    """Two shards in WebDataset's layout: key.png beside key.cls, samples in order."""
    folder.mkdir()
    paths = []
    for s, part in enumerate((images[:4], images[4:])):
        path = folder / f"shard-{s:03d}.tar"
        with tarfile.open(path, "w") as tar:
            for j, im in enumerate(part):
                for name, data in ((f"sample{s}{j:03d}.png", _png(im)), (f"sample{s}{j:03d}.cls", b"3")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def _same(a: MiningStore, b: MiningStore, layer: str) -> None:
    for key in ("image_scores", "image_index", "patch_scores", "patch_index", "patch_boxes"):
        assert torch.equal(a.tensors[layer][key], b.tensors[layer][key]), key


def test_tar_shards_and_hf_datasets_mine_like_a_folder(tiny_model, images, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, im in enumerate(images):  # file names sort in the shards' sample order
        im.save(folder / f"{i:03d}.png")
    plain = mine(tiny_model, ["stage1"], folder, k=3, progress=False)
    shards = _shards(images, tmp_path / "shards")
    for source in (tmp_path / "shards", shards, shards[0]):
        store = mine(tiny_model, ["stage1"], source, k=3, out=tmp_path / f"s{hash(str(source)) % 1000}",
                     progress=False)
        if source == shards[0]:
            assert store.index["dataset"]["count"] == 4
            continue
        _same(plain, store, "stage1")
        assert store.files[4] == "shard-001.tar:sample1000"
        again = MiningStore.load(store.path)  # pixels found again from the shards
        first = again.references("stage1", 0, "patches", 2).images[0][1]
        assert np.array_equal(np.asarray(first), np.asarray(plain.references("stage1", 0, "patches", 2).images[0][1]))

    datasets = pytest.importorskip("datasets")
    saved = tmp_path / "hf"
    datasets.Dataset.from_dict({"image": images, "label": list(range(7))},
                               features=datasets.Features({"image": datasets.Image(),
                                                           "label": datasets.Value("int64")})).save_to_disk(saved)
    store = mine(tiny_model, ["stage1"], saved, k=3, out=tmp_path / "hfstore", progress=False)
    _same(plain, store, "stage1")
    assert store.index["dataset"]["kind"] == "hf-datasets" and store.files[2] == "hf#2"
    patches = MiningStore.load(tmp_path / "hfstore").references("stage1", 1, "patches", 2)
    assert len(patches) == 2


def test_a_shard_mining_resumes_and_refuses_other_shards(tiny_model, images, tmp_path):
    shards = _shards(images, tmp_path / "shards")
    out = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        calls = []

        class Stop:
            """Interrupts the pass after its second batch, as Ctrl-C would."""

            def __init__(self):
                import vital.references.mining as m

                self.m, self.merge = m, m._merge

            def __call__(self, *a, **k):
                calls.append(1)
                if len(calls) == 3:
                    raise KeyboardInterrupt
                return self.merge(*a, **k)

        stop = Stop()
        stop.m._merge = stop
        try:
            mine(tiny_model, ["stage1"], tmp_path / "shards", k=2, out=out, batch_size=2, checkpoint_every=1,
                 progress=False)
        finally:
            stop.m._merge = stop.merge
    resumed = mine(tiny_model, ["stage1"], tmp_path / "shards", k=2, out=out, batch_size=2, progress=False)
    whole = mine(tiny_model, ["stage1"], tmp_path / "shards", k=2, batch_size=2, progress=False)
    _same(whole, resumed, "stage1")
    with pytest.raises(VitalError, match="another image set"):
        mine(tiny_model, ["stage1"], shards[0], k=2, out=out, batch_size=2, progress=False)
    (tmp_path / "bad.tar").write_bytes(b"not a tar")
    with pytest.raises(VitalError, match="cannot read tar shard"):
        mine(tiny_model, ["stage1"], tmp_path / "bad.tar", k=2, progress=False)
