"""The registry corpus' bookkeeping (bench/corpus.py, bench/corpus_split.py) on tiny synthetic files: the selection
and manifest files read back what was written, licences are read from each registry's metadata, resized copies of a
photo share a perceptual hash family, and families never straddle the two halves."""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
from corpus import Source, debian_licence, metadata_licence, read_manifest, read_sources, write_manifest  # noqa: E402
from corpus_split import HASH_DISTANCE, dct_hash, dct_matrix, families, hashes_of, split_families, usable  # noqa: E402


def test_selection_file_reads_rows_and_skips_comments(tmp_path):
    f = tmp_path / "sources.tsv"
    f.write_text("# a comment\nregistry\tpackage\tpath\tsize\tmark\n"
                 "debian\tdarknet\tusr/share/darknet/data/dog.jpg\t768x576\t\n"
                 "npm\t@scope/pkg@1.0.2\tpackage/img/a b.jpg\t500x400\tcutout\n")
    rows = read_sources(f)
    assert rows == [Source("debian", "darknet", "usr/share/darknet/data/dog.jpg", "768x576", ""),
                    Source("npm", "@scope/pkg@1.0.2", "package/img/a b.jpg", "500x400", "cutout")]
    assert rows[0].file == "darknet__usr~share~darknet~data~dog.jpg"
    assert rows[1].file == "scope-pkg__package~img~a_b.jpg"
    assert Source("pypi-wheel", "mezzanine==6.1.1", "x/y.jpg", "", "").file == "mezzanine__x~y.jpg"


def test_the_shipped_selection_is_readable_and_its_files_are_distinct():
    rows = read_sources()
    assert len(rows) >= 300 and len({r.file for r in rows}) == len(rows)
    assert {r.mark for r in rows} <= {"", "cutout", "slice", "drop"}


def test_manifest_round_trip_is_sorted_by_file(tmp_path):
    rows = [{"file": f, "registry": "npm", "package": "p@1", "version": "1", "path": f"package/{f}",
             "licence": "MIT", "sha256": "ab" * 32, "mark": m} for f, m in (("b.jpg", ""), ("a.jpg", "slice"))]
    write_manifest(tmp_path / "manifest.tsv", rows)
    assert read_manifest(tmp_path / "manifest.tsv") == sorted(rows, key=lambda r: r["file"])
    assert read_manifest(tmp_path / "missing.tsv") == []


def test_licences_from_debian_copyright_and_python_metadata():
    copyright_text = ("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
                      "Files: debian/*\nLicense: GPL-2+\n\nFiles: *\nCopyright: someone\nLicense: Expat\n")
    assert debian_licence(copyright_text) == "Expat"
    assert debian_licence("Files: src/*\nLicense: BSD-3-clause\n") == "BSD-3-clause"
    assert debian_licence("free text, no fields") == ""
    assert metadata_licence("Name: x\nLicense: UNKNOWN\nClassifier: License :: OSI Approved :: MIT License\n") \
        == "OSI Approved :: MIT License"
    assert metadata_licence("Name: x\nLicense-Expression: Apache-2.0\nLicense: MIT\n") == "Apache-2.0"


def test_dct_matrix_is_orthonormal_and_matches_the_dct_definition():
    d = dct_matrix(8)
    assert np.allclose(d @ d.T, np.eye(8))
    x = np.random.default_rng(0).normal(size=8)
    k = 3
    explicit = np.sqrt(2 / 8) * sum(x[i] * np.cos(np.pi * (2 * i + 1) * k / 16) for i in range(8))
    assert np.isclose((d @ x)[k], explicit)


def _photo(seed: int, size=(300, 260)) -> Image.Image:
    """A smooth random picture (blobs of colour), so that resizing keeps its low frequencies."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def test_resized_and_recompressed_copies_hash_close_and_other_pictures_far(tmp_path):
    a = _photo(0)
    a.resize((150, 130)).save(tmp_path / "small.jpg", quality=70)
    copy = dct_hash(Image.open(tmp_path / "small.jpg"))
    assert (dct_hash(a) != copy).sum() <= HASH_DISTANCE // 2
    others = [(dct_hash(a) != dct_hash(_photo(s))).sum() for s in range(1, 8)]
    assert min(others) > HASH_DISTANCE


def test_families_are_transitive_and_split_keeps_them_in_one_half():
    bits = np.zeros(64, bool)
    step = lambda n: np.concatenate([np.ones(n, bool), np.zeros(64 - n, bool)])  # noqa: E731
    hashes = {"a": bits, "b": step(8), "c": step(16), "far": ~bits}  # a~b, b~c (8 bits each), a-c 16 apart
    fam = families(hashes, distance=10)
    assert fam == {"a": "a", "b": "a", "c": "a", "far": "far"}
    rng = np.random.default_rng(3)
    many = {f"p{i:02d}": rng.random(64) < 0.5 for i in range(40)}
    many.update({f"p{i:02d}_copy": many[f"p{i:02d}"].copy() for i in range(0, 40, 4)})
    fam = families(many, distance=HASH_DISTANCE)
    first, second = split_families(fam, seed=0)
    assert sorted(first + second) == sorted(many) and not set(first) & set(second)
    for i in range(0, 40, 4):
        assert (f"p{i:02d}" in first) == (f"p{i:02d}_copy" in first)
    assert abs(len(first) - len(second)) <= 4
    assert split_families(fam, seed=0) == (first, second) and split_families(fam, seed=1) != (first, second)


def test_usable_keeps_unmarked_present_photos_of_256_px(tmp_path):
    for name, size in (("big.jpg", (300, 256)), ("small.jpg", (400, 255)), ("marked.jpg", (400, 400))):
        _photo(0, size).save(tmp_path / name)
    rows = [{"file": f, "mark": m} for f, m in (("big.jpg", ""), ("small.jpg", ""), ("marked.jpg", "cutout"),
                                                ("gone.jpg", ""))]
    assert usable(rows, tmp_path) == ["big.jpg"]
    assert set(hashes_of(tmp_path, ["big.jpg"])) == {"big.jpg"}
