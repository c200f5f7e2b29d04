"""The output folder of a batch job: `<out>/job.json` (what was asked and the batch plan), one folder per target
(`<out>/<target slug>/` with its image, transparency and run record) and `<out>/summary.json`.

A target folder is written under a temporary name and renamed into place (`os.replace` of the folder), so a folder
with the target's name is always complete; a killed run leaves at most `.tmp-*` folders (and their `.old` twins), which the
next run removes. Completeness is still checked (the record and every file it names exist), so a folder damaged
by hand is redone rather than trusted.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from vital.errors import VitalError
from vital.outputs.claim import ensure_writable, replace_folder
from vital.outputs.io import write_json
from vital.outputs.record import RunRecord

FORMAT = "vital-batch-job/1"
MANIFEST, SUMMARY = "job.json", "summary.json"


class BatchLayout:
    """The folders and files of one batch job's output (see the module docstring)."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)

    def prepare(self, identity: dict[str, Any], kind: str) -> dict[str, Any] | None:
        """Create the folder, drop leftovers of an interrupted run and return the existing manifest (None for a
        new job). A manifest for another job is an error: results of two jobs are never mixed."""
        if self.out.exists() and not self.out.is_dir():
            raise VitalError(f"--out {self.out} is a file; give a folder for the job's results")
        ensure_writable(self.out)
        for leftover in self.out.glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        path = self.out / MANIFEST
        if not path.is_file():
            if any(p for p in self.out.iterdir() if not p.name.startswith(".")):
                raise VitalError(f"--out {self.out} is a non-empty folder without a {MANIFEST}; use a new folder")
            return None
        old = json.loads(path.read_text())
        if old.get("format") != FORMAT or old.get("kind") != kind:
            raise VitalError(f"{path} is not a vital {kind} job manifest; use another --out")
        if old["job"] != identity:
            diff = sorted(k for k in identity if old["job"].get(k) != identity[k])
            raise VitalError(f"{self.out} holds another job (different {', '.join(diff)}); rerun with the same "
                             "arguments to resume it, or use another --out")
        return old

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json({"format": FORMAT, **manifest}, self.out / MANIFEST)

    def write_summary(self, summary: dict[str, Any]) -> Path:
        return write_json(summary, self.out / SUMMARY)

    def folder(self, slug: str) -> Path:
        return self.out / slug

    def complete(self, slug: str) -> bool:
        """The target's folder has its record and every file the record names."""
        folder = self.folder(slug)
        try:
            record = RunRecord.read(folder)
        except VitalError:
            return False
        names = [name for out in record.outputs for name in (out.image, out.transparency, *out.reference_thumbnails)]
        return bool(names) and all(name and (folder / name).is_file() for name in names)

    def write(self, slug: str, files: dict[str, bytes]) -> Path:
        """Write a target's files as one folder, atomically: all of them appear at once or none does."""
        tag = f"{slug}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp, final = self.out / f".tmp-{tag}", self.folder(slug)
        try:
            for name, data in files.items():
                path = tmp / name
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            replace_folder(tmp, final)  # a damaged earlier attempt is swapped out
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final
