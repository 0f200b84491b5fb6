"""Where a command writes: checked before the work starts, and owned while it runs.

- :func:`~tl_tunedlens.artifacts.outdir.check_file_output`: a single-file output (``eval --out``, ``show --out``) must not be a
  folder, must not lie below a file, and its folder must be creatable and writable; checked by
  creating and removing a probe file in the nearest existing folder, so a read-only file system or
  folder fails here, before any model or data is loaded.
- :class:`~tl_tunedlens.artifacts.outdir.OutputFolder` (``train --out``, ``demo --out``): the same checks for a folder, then an
  exclusive lock (``.tl-tunedlens.lock``, an ``flock`` held until the run ends, naming its holder:
  pid, host, start time, command), so a second run on the same folder fails at once; the lock's
  taker removes the temporary files an interrupted atomic write left behind (``.NAME.XXXXXXXX.tmp``,
  see :mod:`tl_tunedlens.artifacts.files`). A folder already holding a lens or results is refused unless the run resumes
  it or ``overwrite=True``, which removes the files a run writes (``OWNED_NAMES``) and nothing else.

The lock is advisory and POSIX-only (``fcntl.flock``); the kernel releases it when its holder dies,
so a killed run never blocks the next one.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from ..errors import LensError, first_line
from .checkpoint import CHECKPOINT_NAME
from .native import CONFIG_NAME, WEIGHTS_NAME
from .reference import PARAMS_NAME

LOCK_NAME = ".tl-tunedlens.lock"
#: the lens (either format), its checkpoint and the results ``train``/``demo`` write
LENS_NAMES = (CONFIG_NAME, WEIGHTS_NAME, PARAMS_NAME)
RESULT_NAMES = ("metrics.json", "report.md", "report.html", "metric_curves.html", "metric_curves.png")
OWNED_NAMES = (*LENS_NAMES, CHECKPOINT_NAME, *RESULT_NAMES)
_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # tempfile.mkstemp/mkdtemp names made by .files


def _nearest_existing(path: Path, flag: str) -> Path:
    """The nearest existing ancestor of ``path`` (itself included); a one-line error if it is a file."""
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise LensError(f"{flag} {path}: {parent} is a file, so nothing can be written below it: "
                                "pass a path outside it")
            return parent
    raise LensError(f"{flag} {path}: no existing folder above it")  # pragma: no cover - "/" exists


def _probe_writable(folder: Path, flag: str, path: Path) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".tl-tunedlens-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise LensError(f"{flag} {path}: cannot write in {folder} ({first_line(err, 120)}): "
                        "pass a writable location") from None


def check_file_output(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Check that a single file can be written (atomically) at ``path``; returns it as a ``Path``.
    Nothing is created (the probe file is removed at once)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise LensError(f"{flag} {path} is a folder: pass a file name (e.g. {path / 'out'}{path.suffix or ''})")
    if path.name in ("", ".", ".."):
        raise LensError(f"{flag} {path!s} is not a file name: pass one")
    _probe_writable(_nearest_existing(path.parent, flag), flag, path)
    return path


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv)[:300]}


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']} since {info['since']} ({info.get('command', '')})"
    except (ValueError, KeyError, TypeError):
        return "another run"


class OutputFolder:
    """An output folder, checked and locked for one run (a context manager; see the module doc).

    ``resume``: the run continues the folder's checkpoint, so its lens and results may stay;
    ``overwrite``: the folder may hold an earlier lens or results, which :meth:`~tl_tunedlens.artifacts.outdir.OutputFolder.clear` removes."""

    def __init__(self, path: str | os.PathLike, *, flag: str = "--out", resume: bool = False,
                 overwrite: bool = False):
        self.path = Path(path).expanduser()
        self.flag, self.resume, self.overwrite = flag, resume, overwrite
        self._fd: int | None = None
        self._created = False

    # --- checks (no side effects) -----------------------------------------------------------
    def owned_present(self) -> list[str]:
        """The files of ``OWNED_NAMES`` the folder holds now."""
        return [name for name in OWNED_NAMES if (self.path / name).exists()]

    def check(self) -> "OutputFolder":
        """Raise a one-line error unless the run may write here: not a file nor below one, writable,
        and (without resume or overwrite) holding no lens, checkpoint or results."""
        path, flag = self.path, self.flag
        if self.resume and self.overwrite:
            raise LensError("--resume continues the run in the folder and --overwrite replaces it: pass one of them")
        if path.exists() and not path.is_dir():
            raise LensError(f"{flag} {path} is a file: pass a folder path")
        _probe_writable(_nearest_existing(path, flag), flag, path)
        if self.resume:
            if not (path / CHECKPOINT_NAME).is_file():
                raise LensError(f"no checkpoint at {path / CHECKPOINT_NAME} to resume from: train without --resume first")
        elif not self.overwrite and (present := self.owned_present()):
            what = ("a training checkpoint" if present == [CHECKPOINT_NAME] else
                    "a lens" if set(present) & set(LENS_NAMES) else "results")
            raise LensError(f"{flag} {path} already holds {what} ({', '.join(present)}): pass --resume to continue "
                            "its checkpoint, --overwrite to replace it, or another folder")
        return self

    # --- ownership ----------------------------------------------------------------------------
    def acquire(self) -> "OutputFolder":
        """Check, create the folder, take the lock (or fail naming its holder), remove stale temp files."""
        import fcntl

        self.check()
        try:
            self._created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
            lock = self.path / LOCK_NAME
            while True:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _describe(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
                    os.close(fd)
                    raise LensError(f"{self.flag} {self.path} is in use by {holder}: wait for it to finish, "
                                    "or pass another folder") from None
                if os.path.exists(lock) and os.stat(lock).st_ino == os.fstat(fd).st_ino:
                    break  # else the holder removed the file between our open and flock: retry
                os.close(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        except OSError as err:
            raise LensError(f"{self.flag} {self.path}: cannot lock it ({first_line(err, 120)}): "
                            "pass a writable local folder") from None
        self._fd = fd
        self.remove_stale_temp_files()
        return self

    def remove_stale_temp_files(self) -> list[str]:
        """Remove the temp files (and staging folders) interrupted atomic writes left in the folder."""
        removed = []
        for entry in self.path.iterdir():
            if _TEMP.match(entry.name):
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                removed.append(entry.name)
        return removed

    def clear(self) -> list[str]:
        """With ``overwrite``: remove the earlier lens, checkpoint and results (only ``OWNED_NAMES``);
        call it once the run is ready to write. Returns the names removed."""
        if not self.overwrite or self.resume:
            return []
        present = self.owned_present()
        for name in present:
            (self.path / name).unlink(missing_ok=True)
        return present

    def release(self) -> None:
        """Drop the lock and its file (an empty folder the run created is removed too)."""
        if self._fd is None:
            return
        (self.path / LOCK_NAME).unlink(missing_ok=True)  # while still holding it: see acquire's retry
        os.close(self._fd)
        self._fd = None
        if self._created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def __enter__(self) -> "OutputFolder":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
