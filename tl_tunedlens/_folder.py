"""Write several files of a folder all-or-nothing: stage every file first, rename only at the end.

A new folder is built under a temporary name beside it and renamed into place (atomic); in an
existing folder every file is staged as a hidden temporary file and the renames happen only once
all of them were written. Any error removes what was staged and leaves the folder as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .errors import LensError

Writer = Callable[[Path], None]


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


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
