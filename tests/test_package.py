"""The distribution as a user gets it: the sdist and wheel that `python -m build` makes, checked by twine, holding
only the library, and installed into a fresh virtual environment that already holds torch, which it must keep.

The fresh environment sees the dependencies of this interpreter (torch and the rest) through one .pth line that
names a folder of links to this interpreter's site-packages, minus vital's own entries (its dist-info and, for an
editable install, its path hook): an environment where torch and the other dependencies are installed and vital is
not. The folder lies outside the new environment, so pip cannot remove anything in it. Nothing is downloaded:
the build runs without isolation and pip with --no-index."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

pytestmark = pytest.mark.package

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DIST = PROJECT["name"]
VERSION = PROJECT["version"]
WHEEL_STEM = re.sub(r"[-_.]+", "_", DIST)


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    # a hang guard, not a timing: one thread on a loaded 2-core machine took over 300 s for `vital demo --steps 20`
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    if check and done.returncode != 0:
        raise AssertionError(f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT], cwd=ROOT)
    return out


def _wheel(dist: Path) -> Path:
    (wheel,) = dist.glob(f"{WHEEL_STEM}-{VERSION}-*.whl")
    return wheel


def test_sdist_and_wheel_pass_twine_check(dist):
    files = sorted(dist.iterdir())
    assert sorted(f.suffix for f in files) == [".gz", ".whl"], files
    _run([sys.executable, "-m", "twine", "check", "--strict", *files], cwd=dist)


def test_wheel_holds_the_library_only(dist):
    names = zipfile.ZipFile(_wheel(dist)).namelist()
    info = f"{WHEEL_STEM}-{VERSION}.dist-info/"
    assert all(n.startswith(("vital/", info)) for n in names), [n for n in names if not n.startswith(("vital/", info))]
    assert not [n for n in names if re.search(r"(^|/)(tests?|bench|conftest\.py)(/|$)", n)]
    src = ROOT / "src"
    library = {p.relative_to(src).as_posix() for p in (src / "vital").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert library <= set(names), sorted(library - set(names))  # every module and template travels
    assert {"vital/__main__.py", "vital/_version.py", "vital/pages/display.py", "vital/pages/templates/base.html", f"{info}licenses/LICENSE"} <= set(names)
    whl = zipfile.ZipFile(_wheel(dist))
    entry_points = whl.read(f"{info}entry_points.txt").decode()
    assert re.search(r"^vital = vital\.cli:main$", entry_points, re.M)
    meta = Parser().parsestr(whl.read(f"{info}METADATA").decode())
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    pinned = [str(r) for r in requires if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not pinned  # ranges, never pins
    run_time = {r.name.lower(): r.specifier for r in requires if r.marker is None or "extra" not in str(r.marker)}
    assert "2.14.1" in run_time["torch"] and "3.0" not in run_time["torch"] and "2.13" not in run_time["torch"]
    assert "0.29.1" in run_time["torchvision"] and "jinja2" in run_time


def _shared_site(tmp: Path) -> Path:
    """Links to everything in this interpreter's site-packages except vital's own entries."""
    shared = tmp / "shared-site-packages"
    shared.mkdir()
    paths = sysconfig.get_paths()
    for folder in dict.fromkeys([paths["purelib"], paths["platlib"]]):
        for entry in Path(folder).iterdir():
            name = entry.name
            ours = name == "vital" or re.match(rf"^(vital|{WHEEL_STEM})-.*\.(dist|egg)-info$", name, re.I)
            if ours or name.startswith("__editable__") or name.endswith(".pth") or name == "__pycache__":
                continue
            if not (shared / name).exists():
                (shared / name).symlink_to(entry)
    return shared


def _env_with_torch(tmp: Path) -> tuple[Path, Path]:
    env = tmp / "env"
    venv.create(env, with_pip=False, symlinks=True)
    python = env / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).stdout.strip())
    (site / "_reuse_torch.pth").write_text(f"{_shared_site(tmp)}\n")
    return env, python


def _torch(python: Path, cwd: Path) -> str:
    return _run([python, "-c", "import torch; print(torch.__version__, torch.__file__)"], cwd).stdout.strip()


def test_wheel_installs_beside_torch_and_runs(dist, tmp_path):
    env, python = _env_with_torch(tmp_path)
    torch_before = _torch(python, tmp_path)
    assert _run([python, "-c", "import vital"], tmp_path, check=False).returncode != 0  # not installed yet
    wheel = _wheel(dist)

    report = tmp_path / "report.json"
    _run([python, "-m", "pip", "install", "--no-index", "--dry-run", "--quiet", "--report", report, wheel], tmp_path)
    planned = [item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]]
    assert planned == [DIST], planned  # torch, torchvision and every other dependency are kept as they are

    _run([python, "-m", "pip", "install", "--no-index", "--quiet", wheel], tmp_path)
    assert _torch(python, tmp_path) == torch_before

    where = _run([python, "-c", "import vital; print(vital.__version__); print(vital.__file__)"], tmp_path).stdout
    version, location = where.split()
    assert version == VERSION
    assert Path(location).is_relative_to(env) and not Path(location).is_relative_to(ROOT)

    vital = env / "bin" / "vital"
    usage = _run([python, "-m", "vital", "--help"], tmp_path).stdout  # `python -m vital` is the same command line
    assert usage.startswith("usage: vital") and "layers" in usage
    for cmd in ([vital, "--version"], [python, "-m", "vital", "--version"]):
        assert VERSION in _run(cmd, tmp_path).stdout

    layers = _run([vital, "layers", "efficientnet_lite0"], tmp_path).stdout
    assert "_blocks.7" in layers and "_blocks.15" in layers

    out = tmp_path / "run"
    _run([vital, "class", "--model", "efficientnet_lite0", "--class", "282", "--refs", "offline", "-n", "4",
          "--steps", "3", "--quiet", "--out", out], tmp_path)
    record = json.loads((out / "record.json").read_text())
    assert (out / "class0282.png").is_file() and (out / "class0282_transparency.png").is_file()
    assert record["versions"]["vital"] == VERSION

    demo = tmp_path / "demo"  # the newcomer's first command, from the installed wheel alone
    printed = _run([vital, "demo", "--steps", "20", "--out", demo], tmp_path).stdout
    assert "run records:" in printed
    for part in ("class", "neuron"):
        assert json.loads((demo / part / "record.json").read_text())["versions"]["vital"] == VERSION
    assert (demo / "class" / "class0282.png").is_file() and any((demo / "neuron").glob("*_transparency.png"))
