"""The folder a run writes: claimed for the whole run, written as a whole.

- A folder that holds another run (a record.json) is replaced only with `overwrite`; a non-empty folder that holds
  no run is never touched; an empty name is refused (it would mean the current folder).
- A lock file beside the folder (`.<name>.vital-lock`, holding the writer's pid and host) stops a second writer
  while the first is alive; the lock of a process that no longer runs is stale and taken over.
- The files of a run are written into a temporary folder beside the target and renamed into place, so the folder
  always holds one whole run: a kill during the save leaves the previous run (or nothing) plus a `.<name>.tmp-*`
  leftover, which the next writer removes.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from vital.errors import VitalError
from vital.io import ensure_writable, replace_folder

T = TypeVar("T")
RECORD = "record.json"
_HELD: dict[Path, RunFolder] = {}  # folders this process holds, so a save inside a claimed run reuses the claim


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class RunFolder:
    """Claim `out` for a run (`with RunFolder(out, overwrite):`) and `commit` its files as one folder."""

    def __init__(self, out: str | os.PathLike, overwrite: bool = False):
        if not str(out).strip():
            raise VitalError("the output folder is an empty name; pass --out FOLDER")
        self.path = Path(out).expanduser().absolute()
        self.overwrite = overwrite
        self.lock = self.path.parent / f".{self.path.name}.vital-lock"
        self.held = False

    # ---- the claim ----------------------------------------------------------------------------------------------

    def __enter__(self) -> RunFolder:
        if self.path in _HELD:
            return self
        if self.path.exists() and not self.path.is_dir():
            raise VitalError(f"--out {self.path} is a file; give a folder for the run")
        ensure_writable(self.path.parent)
        self._lock()
        try:
            for leftover in self.path.parent.glob(f".{self.path.name}.tmp-*"):  # ".old" ones too
                shutil.rmtree(leftover, ignore_errors=True)  # a killed writer's: the lock is ours now
            self._check_contents()
        except BaseException:
            self._unlock()
            raise
        _HELD[self.path] = self
        self.held = True
        return self

    def __exit__(self, *exc) -> None:
        if self.held:
            _HELD.pop(self.path, None)
            self.held = False
            self._unlock()

    def _lock(self) -> None:
        me = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid_text, _, host = self.lock.read_text().partition(" ")
                    pid = int(pid_text)
                except (OSError, ValueError):
                    pid, host = -1, ""
                if pid > 0 and host == socket.gethostname() and _alive(pid):
                    raise VitalError(f"another vital process (pid {pid}) is writing to {self.path}; wait for it to "
                                     "finish or choose another --out") from None
                if pid > 0 and host and host != socket.gethostname():
                    raise VitalError(f"{self.path} is locked by a vital process on {host} ({self.lock}); delete "
                                     "the lock file if that process is gone") from None
                self.lock.unlink(missing_ok=True)  # stale: its writer no longer runs
                continue
            except OSError as e:
                raise VitalError(f"cannot create the lock file {self.lock} ({e.strerror}); choose another --out") from e
            with os.fdopen(fd, "w") as f:
                f.write(me)
            return
        raise VitalError(f"cannot take the lock {self.lock}; another process keeps creating it")

    def _unlock(self) -> None:
        self.lock.unlink(missing_ok=True)

    def _check_contents(self) -> None:
        if not self.path.is_dir():
            return
        entries = [p for p in self.path.iterdir() if not p.name.startswith(".")]
        if not entries:
            return
        if (self.path / RECORD).is_file():
            if not self.overwrite:
                raise VitalError(f"--out {self.path} holds another run (its {RECORD}); pass --overwrite to replace "
                                 "it, or choose another folder")
            return
        raise VitalError(f"--out {self.path} is not empty and holds no vital run; choose an empty or new folder")

    # ---- writing ------------------------------------------------------------------------------------------------

    def commit(self, write: Callable[[Path], T]) -> T:
        """Call `write(folder)` on a fresh temporary folder, then put that folder in place of the run folder."""
        if not self.held and self.path not in _HELD:
            raise VitalError("commit needs a claimed folder: use `with RunFolder(out) as f: f.commit(...)`")
        tmp = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            result = write(tmp)
            replace_folder(tmp, self.path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return result


def save_run(out: str | os.PathLike, write: Callable[[Path], T], overwrite: bool = False) -> T:
    """Write a run's files into `out` as one folder, under the claim this process already holds on it, or under a
    claim taken for the save."""
    path = Path(out).expanduser().absolute() if str(out).strip() else Path("")
    held = _HELD.get(path)
    if held is not None:
        return held.commit(write)
    with RunFolder(out, overwrite) as folder:
        return folder.commit(write)
