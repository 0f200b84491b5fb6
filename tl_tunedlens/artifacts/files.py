"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

``write_folder_atomic`` writes several files of a folder all-or-nothing: a new folder is built under
a temporary name beside it and renamed into place; in an existing folder every file is staged as a
hidden temporary file and the renames happen only once all of them were written. Any error removes
what was staged and leaves the folder as it was.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import LensError, first_line

Writer = Callable[[Path], None]


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def cache_dir() -> Path:
    """Root of tl_tunedlens's on-disk cache (``$TL_TUNEDLENS_CACHE`` or ``~/.cache/tl_tunedlens``)."""
    return Path(os.environ.get("TL_TUNEDLENS_CACHE") or Path.home() / ".cache" / "tl_tunedlens")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextmanager
def write_failure_as_oserror(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn a serializer's failed write inside the block (torch's ``RuntimeError``, safetensors'
    ``SafetensorError``: a full disk, a file-size limit, an I/O error) into an ``OSError`` naming ``what``
    and ``path``, as a failed plain write would be."""
    try:
        yield
    except OSError:
        raise
    except Exception as err:
        if isinstance(err, RuntimeError) or type(err).__name__ == "SafetensorError":
            raise OSError(errno.EIO, f"writing {what} failed ({first_line(err, 120)}): the disk is probably full; "
                                     "free some space and run the command again", str(path)) from None
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def strict_json(obj: Any, what: str) -> str:
    """``obj`` as indented, strict JSON (a NaN or inf is a one-line error naming ``what``, never written)."""
    try:
        return json.dumps(obj, indent=2, sort_keys=False, allow_nan=False)
    except ValueError as err:
        raise LensError(f"{what} holds a non-finite number ({err}): nothing was written") from None


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON (:func:`~tl_tunedlens.artifacts.files.strict_json`) to ``path`` atomically."""
    write_text_atomic(path, strict_json(obj, str(path)) + "\n")


def write_folder_atomic(folder: str | os.PathLike, writers: dict[str, Writer]) -> Path:
    """Create/update ``folder`` with one file per ``writers`` entry (``name -> writer(tmp_path)``)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LensError(f"cannot save a lens to {folder}: it is a file, not a folder; pass a folder path")
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        try:
            for name, write in writers.items():
                write(staging / name)
                _fsync(staging / name)
            os.rename(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return folder
    staged: dict[str, Path] = {}
    try:
        for name, write in writers.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
            os.close(fd)
            staged[name] = Path(tmp)
            write(staged[name])
            _fsync(staged[name])
        for name, tmp in staged.items():
            os.replace(tmp, folder / name)
    except BaseException:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        raise
    return folder
