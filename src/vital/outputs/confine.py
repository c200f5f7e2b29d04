"""Paths read from files on disk (a run record, a store's file list) stay inside the folder they belong to.

A record or a store may have been edited by hand or come from someone else; a page built from it is published.
So a name it holds is followed only inside its root: outputs inside the run folder, a store's images inside the
store's image root; a reference file of a record inside the run folder or the mining store the record names, or,
for references chosen from the user's own folders, only while its bytes still have the SHA-256 the record
lists (a record can then show no image that its writer did not already have). Anything else is one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from vital.errors import VitalError
from vital.outputs.io import file_sha256

if TYPE_CHECKING:
    from vital.outputs.record import ReferenceEntry


def relative_name(name: object, where: str | os.PathLike, what: str = "file") -> str:
    """`name` if it is a relative path that does not climb out of its folder ('..', absolute, drive, empty)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise VitalError(f"{where} names a {what} that is not a file name ({name!r}); it is damaged")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if Path(name).is_absolute() or name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise VitalError(f"{where} names a {what} outside its folder ({name}); names in it must stay inside it")
    return name


def inside(root: Path, name: object, where: str | os.PathLike, what: str = "file") -> Path:
    """The path of `name` under `root`, refused (one line) if it leaves `root`, also through a symbolic link."""
    if not isinstance(name, str) or not name:
        raise VitalError(f"{where} names {what} that is not a file name ({name!r}); re-run to rewrite it")
    path = (root / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(root.resolve()):
        raise VitalError(f"{where} names a file outside its run folder ({name}); a run's files are inside it: "
                         "re-run to rewrite the record")
    return path


def _store_root(origin: dict) -> Path | None:
    """The image folder of the mining store a reference origin names (None when it names none that is here)."""
    store = origin.get("store") if origin.get("kind") == "mined" else None
    if not isinstance(store, str):
        return None
    try:
        index = json.loads((Path(store) / "index.json").read_text(encoding="utf-8"))
        root = index["dataset"]["root"] if index["dataset"]["kind"] == "folder" else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Path(root).resolve() if isinstance(root, str) else None


def record_references(entry: ReferenceEntry, run_dir: Path, where: str | os.PathLike) -> list[Path]:
    """The reference files of a record's entry that exist, each confined (see the module docstring); names that
    are not files (views of an offline photo, mined patches) are left out."""
    roots = [run_dir.resolve(), *filter(None, [_store_root(entry.origin)])]
    out = []
    for f in entry.files:
        path = Path(f.file)
        if not path.is_file():
            continue
        real = path.resolve()
        if any(real.is_relative_to(r) for r in roots):
            out.append(path)
            continue
        try:
            same = file_sha256(real) == f.sha256
        except OSError:
            same = False
        if not same:
            raise VitalError(f"{where} names a reference file outside its run folder and store whose bytes are not "
                             f"the recorded ones ({f.file}); only the files a run used are shown")
        out.append(path)
    return out
