"""Output folders: one claim for every command that writes a folder (`vital.outputs.io` writes the files inside).

- A folder that holds this command's own output (a run's record; for eval, report, compare, circuit and atlas
  a `.vital-output` marker naming the command) is replaced only with `overwrite`; atlas, which is built
  incrementally, updates its own folder in place. A non-empty folder that holds no such output is never touched;
  an empty name is refused (it would mean the current folder).
- A lock file beside the folder (`.<name>.vital-lock`, holding the writer's pid and host) stops a second writer
  while the first is alive; the lock of a process that no longer runs is stale and taken over. `vital batch` takes
  the same lock.
- The files are written into a temporary folder beside the target and renamed into place, so the folder always
  holds one whole output: a kill during the save leaves the previous output (or nothing) plus a `.<name>.tmp-*`
  leftover, which the next writer removes.
- A symlinked folder is followed (its target is claimed and replaced; the link stays); a name longer than the file
  system allows is one error line.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from vital.errors import VitalError
from vital.outputs.record import RECORD

T = TypeVar("T")
L = TypeVar("L", bound="FolderLock")
MARKER = ".vital-output"  # in the folder of eval, report, compare, circuit and atlas: the command's name
SUFFIX_ROOM = 40  # what the lock and temporary names add to a folder's name (".NAME.tmp-PID-HEX.old")
_HELD: dict[Path, FolderLock] = {}  # folders this process holds, so a save inside a claimed run reuses the claim


def ensure_writable(out_dir: str | os.PathLike) -> Path:
    """Create `out_dir` and check that files can be written there, before any long computation."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise VitalError(f"cannot write to output folder {out} ({e.strerror or e}); choose another --out") from e
    return out


def remove(path: Path) -> None:
    """Remove a leftover folder, file or symlink (a link is unlinked, never followed)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def replace_folder(tmp: Path, final: Path) -> None:
    """Put the complete folder `tmp` in place of `final` (which may not exist): the old one is moved aside, the new
    one renamed in, the old one removed, so a reader finds the old folder or the new one, never a mix."""
    old = tmp.with_name(tmp.name + ".old")
    if final.exists() or final.is_symlink():
        os.replace(final, old)
    os.replace(tmp, final)
    remove(old)


def out_path(out: str | os.PathLike) -> Path:
    """The absolute folder `out` names, with a symlink followed, after checks that need no file system write: not
    an empty name, a name the file system can hold beside our temporary names."""
    if not str(out).strip():
        raise VitalError("the output folder is an empty name; pass --out FOLDER")
    path = Path(out).expanduser().absolute()
    limit = _name_max(path.parent)
    if len(os.fsencode(path.name)) > limit - SUFFIX_ROOM:
        raise VitalError(f"--out name '{path.name[:40]}...' is {len(os.fsencode(path.name))} bytes long; use a name "
                         f"under {limit - SUFFIX_ROOM} bytes")
    try:
        return path.resolve() if path.is_symlink() else path
    except (OSError, RuntimeError) as e:
        raise VitalError(f"--out {path} is a symlink that cannot be followed ({e}); give a real folder") from e


def _name_max(folder: Path) -> int:
    for f in (folder, *folder.parents):
        try:
            return os.pathconf(f, "PC_NAME_MAX")
        except (OSError, ValueError):
            continue
    return 255


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class FolderLock:
    """The lock beside folder `out` (`with FolderLock(out):`): one writer at a time, re-entrant in one process."""

    def __init__(self, out: str | os.PathLike):
        self.path = out_path(out)
        self.lock = self.path.parent / f".{self.path.name}.vital-lock"
        self.held = False

    def __enter__(self: L) -> L:
        if self.path in _HELD:
            return self
        if self.path.exists() and not self.path.is_dir():
            raise VitalError(f"--out {self.path} is a file; give a folder")
        ensure_writable(self.path.parent)
        self._lock()
        try:
            for leftover in self.path.parent.glob(f".{self.path.name}.tmp-*"):  # ".old" ones too
                remove(leftover)  # a killed writer's: the lock is ours now
            self.check()
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

    def check(self) -> None:
        """What the folder must hold for this writer (nothing to check for a bare lock)."""

    def _lock(self) -> None:
        me = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_or_clear()
                continue
            except OSError as e:
                raise VitalError(f"cannot create the lock file {self.lock} ({e.strerror}); choose another --out") from e
            with os.fdopen(fd, "w") as f:
                f.write(me)
            return
        raise VitalError(f"cannot take the lock {self.lock}; another process keeps creating it")

    def _refuse_or_clear(self) -> None:
        try:
            pid_text, _, host = self.lock.read_text().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            pid, host = -1, ""
        if pid > 0 and host == socket.gethostname() and _alive(pid):
            raise VitalError(f"another vital process (pid {pid}) is writing to {self.path}; wait for it to "
                             "finish or choose another --out")
        if pid > 0 and host and host != socket.gethostname():
            raise VitalError(f"{self.path} is locked by a vital process on {host} ({self.lock}); delete "
                             "the lock file if that process is gone")
        self.lock.unlink(missing_ok=True)  # stale: its writer no longer runs

    def _unlock(self) -> None:
        self.lock.unlink(missing_ok=True)


class RunFolder(FolderLock):
    """Claim `out` for one command's output (`with RunFolder(out, overwrite, kind):`) and `commit` its files as
    one folder. `kind` "run": a run (its run record); else the command's name, kept in a marker file.
    `in_place`: the command updates its own folder where it is (atlas), so its own output needs no `overwrite`."""

    def __init__(self, out: str | os.PathLike, overwrite: bool = False, kind: str = "run", in_place: bool = False):
        super().__init__(out)
        self.overwrite, self.kind, self.in_place = overwrite, kind, in_place

    def owner(self) -> str | None:
        """The command whose output the folder holds ("run" for a run), None for a foreign folder."""
        if (self.path / RECORD).is_file():
            return "run"
        try:
            return (self.path / MARKER).read_text().strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def check(self) -> None:
        try:
            entries = [p for p in self.path.iterdir() if not p.name.startswith(".")] if self.path.is_dir() else []
        except OSError as e:
            raise VitalError(f"cannot read --out {self.path} ({e.strerror}); choose another folder") from e
        if not entries:
            return
        owner = self.owner()
        if owner == self.kind:
            if self.overwrite or self.in_place:
                return
            what = f"another run (its {RECORD})" if owner == "run" else f"the output of an earlier vital {owner}"
            raise VitalError(f"--out {self.path} holds {what}; pass --overwrite to replace it, or choose another "
                             "folder")
        if owner is not None:
            theirs = "a vital run" if owner == "run" else f"the output of vital {owner}"
            raise VitalError(f"--out {self.path} holds {theirs}, not of vital {self.kind}; choose another folder")
        raise VitalError(f"--out {self.path} is not empty and holds no vital {'run' if self.kind == 'run' else 'output'}"
                         "; choose an empty or new folder")

    def mark(self, folder: Path) -> None:
        if self.kind != "run":
            (folder / MARKER).write_text(self.kind + "\n")

    def commit(self, write: Callable[[Path], T]) -> T:
        """Call `write(folder)` on a fresh temporary folder, then put that folder in place of the output folder
        (with `in_place`: call it on the folder itself, marked first so that a half-built one stays ours)."""
        self._check_held()
        if self.in_place:
            self.path.mkdir(exist_ok=True)
            self.mark(self.path)
            return write(self.path)
        tmp = self._aside()
        tmp.mkdir()
        try:
            self.mark(tmp)
            result = write(tmp)
            replace_folder(tmp, self.path)
        finally:
            remove(tmp)
        return result

    def commit_in_place(self, write: Callable[[Path], T]) -> T:
        """For an output that names its files by their final paths (compare's table): the earlier output is moved
        aside, `write` fills the folder itself (marked first), the earlier output is removed once `write` returns
        and put back if it fails."""
        self._check_held()
        old = None
        if self.path.is_dir() and any(self.path.iterdir()):
            old = self._aside(".old")
            os.replace(self.path, old)
        self.path.mkdir(exist_ok=True)
        try:
            self.mark(self.path)
            result = write(self.path)
        except BaseException:
            if old is not None:
                remove(self.path)
                os.replace(old, self.path)
            raise
        if old is not None:
            remove(old)
        return result

    def _aside(self, suffix: str = "") -> Path:
        return self.path.parent / f".{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"

    def _check_held(self) -> None:
        if not self.held and self.path not in _HELD:
            raise VitalError("commit needs a claimed folder: use `with RunFolder(out) as f: f.commit(...)`")


def save_run(out: str | os.PathLike, write: Callable[[Path], T], overwrite: bool = False) -> T:
    """Write a run's files into `out` as one folder, under the claim this process already holds on it, or under a
    claim taken for the save."""
    held = _HELD.get(out_path(out))
    if isinstance(held, RunFolder):
        return held.commit(write)
    with RunFolder(out, overwrite) as folder:
        return folder.commit(write)
