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
  it or ``overwrite=True``.

**Replacing is atomic.** With ``overwrite=True`` over an earlier lens or results, the run writes into
a staging folder inside the target (``.tl-tunedlens-staging/``: its checkpoints, lens and results),
and the earlier files stay untouched until :meth:`~tl_tunedlens.artifacts.outdir.OutputFolder.commit`
moves the new ones in at the end (and removes the earlier files of ``OWNED_NAMES`` the new run did not
write; the user's own files always stay). A kill, a divergence or a full disk before that leaves the
earlier lens as it was and the new run's checkpoint in the staging folder, which ``--resume``
continues. The commit first records the list of staged files (``COMMIT``), then renames them one by
one: a commit cut short is finished by the next run that takes the folder's lock.

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
#: where a run that replaces an earlier lens writes until it commits (inside the output folder)
STAGING_NAME = ".tl-tunedlens-staging"
_COMMIT = "COMMIT"   # in the staging folder: the staged names, written once they are all complete
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

    ``resume``: the run continues the folder's checkpoint (or the staged one of an interrupted
    ``overwrite`` run), so its lens and results may stay; ``overwrite``: the folder may hold an earlier
    lens or results, which the new ones replace at :meth:`commit`. The run writes into :attr:`work`."""

    def __init__(self, path: str | os.PathLike, *, flag: str = "--out", resume: bool = False,
                 overwrite: bool = False):
        self.path = Path(path).expanduser()
        self.flag, self.resume, self.overwrite = flag, resume, overwrite
        self._fd: int | None = None
        self._created = False
        self.staged = False    # whether the run writes into the staging folder (decided by check())

    @property
    def staging(self) -> Path:
        """The staging folder of a replacing run (see the module doc)."""
        return self.path / STAGING_NAME

    @property
    def work(self) -> Path:
        """Where the run writes its checkpoints, lens and results: the staging folder when it replaces
        an earlier lens or resumes such a run, else the folder itself."""
        return self.staging if self.staged else self.path

    # --- checks (no side effects) -----------------------------------------------------------
    def owned_present(self) -> list[str]:
        """The files of ``OWNED_NAMES`` the folder holds now."""
        return [name for name in OWNED_NAMES if (self.path / name).exists()]

    def check(self) -> "OutputFolder":
        """Raise a one-line error unless the run may write here: not a file nor below one, writable,
        and (without resume or overwrite) holding no lens, checkpoint or results. Decides :attr:`work`."""
        path, flag = self.path, self.flag
        if self.resume and self.overwrite:
            raise LensError("--resume continues the run in the folder and --overwrite replaces it: pass one of them")
        if path.exists() and not path.is_dir():
            raise LensError(f"{flag} {path} is a file: pass a folder path")
        _probe_writable(_nearest_existing(path, flag), flag, path)
        if self.resume:
            committing = (self.staging / _COMMIT).is_file()   # finished by acquire(): its checkpoint moves in
            self.staged = (self.staging / CHECKPOINT_NAME).is_file() and not committing
            if not (self.staged or committing or (path / CHECKPOINT_NAME).is_file()):
                raise LensError(f"no checkpoint at {path / CHECKPOINT_NAME} to resume from: train without --resume first")
        elif self.overwrite:
            self.staged = bool(self.owned_present())
        elif present := self.owned_present():
            what = ("a training checkpoint" if present == [CHECKPOINT_NAME] else
                    "a lens" if set(present) & set(LENS_NAMES) else "results")
            raise LensError(f"{flag} {path} already holds {what} ({', '.join(present)}): pass --resume to continue "
                            "its checkpoint, --overwrite to replace it, or another folder")
        return self

    # --- ownership ----------------------------------------------------------------------------
    def acquire(self) -> "OutputFolder":
        """Check, create the folder, take the lock (or fail naming its holder), finish a commit an
        earlier run left cut short, remove stale temp files, and make the staging folder if needed."""
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
        self._finish_commit()
        self.remove_stale_temp_files()
        if self.staged and not self.resume:   # a new replacing run: an interrupted earlier one is dropped
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging.mkdir()
        return self

    def remove_stale_temp_files(self) -> list[str]:
        """Remove the temp files (and staging folders) interrupted atomic writes left in the folder and
        in its staging folder."""
        removed = []
        for folder in (self.path, self.staging):
            if folder.is_dir():
                for entry in folder.iterdir():
                    if _TEMP.match(entry.name):
                        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                        removed.append(entry.name)
        return removed

    def commit(self) -> list[str]:
        """Move the staged lens, checkpoint and results into the folder, replacing the earlier ones, and
        remove the earlier files of ``OWNED_NAMES`` the run did not write. Returns the earlier names
        replaced or removed (nothing when the run did not stage). Call it once everything is written."""
        if not self.staged:
            return []
        earlier = self.owned_present()
        staged = [name for name in OWNED_NAMES if (self.staging / name).is_file()]
        from .files import write_json_atomic

        write_json_atomic(self.staging / _COMMIT, staged)
        self._finish_commit()
        self.staged = False
        return earlier

    def _finish_commit(self) -> None:
        """Carry out a recorded commit (:meth:`commit`, or one an earlier run left cut short); idempotent."""
        marker = self.staging / _COMMIT
        if not marker.is_file():
            return
        staged = json.loads(marker.read_text())
        for name in OWNED_NAMES:
            if name in staged:
                if (self.staging / name).exists():
                    os.replace(self.staging / name, self.path / name)
            else:
                (self.path / name).unlink(missing_ok=True)
        _fsync_dir(self.path)
        shutil.rmtree(self.staging, ignore_errors=True)

    def release(self) -> None:
        """Drop the lock and its file (an empty staging folder, and an empty folder the run created, are removed too)."""
        if self._fd is None:
            return
        if self.staging.is_dir() and not any(self.staging.iterdir()):
            self.staging.rmdir()
        (self.path / LOCK_NAME).unlink(missing_ok=True)  # while still holding it: see acquire's retry
        os.close(self._fd)
        self._fd = None
        if self._created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def __enter__(self) -> "OutputFolder":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _fsync_dir(path: Path) -> None:
    """Make the renames in folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
