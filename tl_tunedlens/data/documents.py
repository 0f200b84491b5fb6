"""Text documents for training and evaluating lenses, and their train / held-out split.

Sources (:func:`load_documents`):

- an embedded corpus (:mod:`.corpora`): ``"shakespeare"`` (one document per play or poem),
  ``"fortunes"`` (the BSD fortune files), ``"pydoc"`` (Python's help topics, never trained on by default);
- a mixture of sources, ``shakespeare+fortunes`` or ``shakespeare:0.7+fortunes:0.3`` (:mod:`.mixture`);
- a ``.txt`` file (one document) or a folder of ``.txt`` files (one document per file, sorted);
- a ``.jsonl`` file, one JSON object per line, text read from ``text_field`` (default ``"text"``);
- anything else is taken as a Hugging Face dataset name (``name`` or ``name:config``), which
  needs the ``datasets`` package and a reachable hub.

:func:`split_documents` makes a deterministic, seedable train / held-out split *by document*
(held-out documents are never used for training); :func:`split_source` loads and splits in one
call, each part of a mixture on its own.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..errors import LensError, first_line
from .config import HELD_OUT, SPLIT_SEED, SPLITS
from .mixture import parse_mixture



@dataclass(frozen=True)
class Document:
    """One document: ``name`` (file name, ``file:line`` or ``dataset[i]``) and its text."""

    name: str
    text: str


# --- loading documents ------------------------------------------------------------------
def check_source(source: str | os.PathLike) -> None:
    """The checks of a data ``source`` that need neither a model nor reading it: a path that looks local
    must exist, and a folder must hold ``.txt`` files (one-line errors); what :func:`load_documents` checks first."""
    from .corpora import CORPORA

    source_str = str(source)
    if source_str in CORPORA:
        return
    parts = parse_mixture(source_str)
    if parts is not None:
        for name, _ in parts:
            if parse_mixture(name) is None:
                check_source(name)
        return
    path = Path(source_str).expanduser()
    if path.is_dir():
        if not any(p.is_file() and p.suffix == ".txt" for p in path.iterdir()):
            raise LensError(f"the folder {path} holds no .txt files: put the texts in *.txt files")
    elif not path.is_file() and (path.suffix in (".txt", ".jsonl") or source_str.startswith((".", "/", "~"))
                                 or source_str.count("/") > 1):
        raise LensError(f"data file {source_str} does not exist: pass an existing .txt, .jsonl or folder")


def load_documents(source: str | os.PathLike, *, text_field: str = "text", hf_split: str = "train",
                   max_documents: int | None = None) -> list[Document]:
    """Documents of ``source`` (see the module docstring), in a fixed order; empty texts dropped."""
    from .corpora import CORPORA, corpus_texts

    source_str = str(source)
    check_source(source)
    parts = parse_mixture(source_str)
    if parts is not None:   # every part's documents, named with their part
        docs = [Document(f"{name}/{d.name}", d.text) for name, _ in parts
                for d in load_documents(name, text_field=text_field, hf_split=hf_split, max_documents=max_documents)]
    elif source_str in CORPORA:
        docs = [Document(name, text) for name, text in corpus_texts(source_str)]
    else:
        path = Path(source_str).expanduser()
        if path.is_dir():
            docs = [_read_txt(p) for p in sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".txt")]
        elif path.is_file() and path.suffix == ".jsonl":
            docs = _read_jsonl(path, text_field)
        elif path.is_file():
            docs = [_read_txt(path)]
        else:
            docs = _read_hf_dataset(source_str, text_field, hf_split, max_documents)
    docs = [d for d in docs if d.text.strip()]
    if max_documents is not None:
        docs = docs[:max_documents]
    if not docs:
        raise LensError(f"the data {source_str} is empty: pass text with at least one non-empty document")
    return docs


def _read_txt(path: Path) -> Document:
    try:
        return Document(path.name, path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise LensError(f"{path} is not UTF-8 text: convert it to UTF-8") from None


def _read_jsonl(path: Path, text_field: str) -> list[Document]:
    docs = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise LensError(f"{path}:{lineno} is not UTF-8 text: convert the file to UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise LensError(f"{path}:{lineno} is not valid JSON ({err.msg}): one JSON object per line") from None
            if not isinstance(obj, dict) or text_field not in obj:
                keys = sorted(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
                raise LensError(
                    f"{path}:{lineno} has no field {text_field!r} (found {keys}): pass --text-field with the right name"
                )
            if not isinstance(obj[text_field], str):
                raise LensError(f"{path}:{lineno}: field {text_field!r} is not a string: pick a text field")
            docs.append(Document(f"{path.name}:{lineno}", obj[text_field]))
    return docs


def _read_hf_dataset(name: str, text_field: str, split: str, max_documents: int | None) -> list[Document]:
    try:
        import datasets
    except ImportError:
        raise LensError(
            f"{name!r} is not a file or folder, and loading it as a Hugging Face dataset needs the "
            "'datasets' package: pip install datasets, or pass a .txt/.jsonl file or a folder"
        ) from None
    from ..artifacts.hub import hub_offline, hub_reachable

    if not hub_offline() and not hub_reachable():
        raise LensError(
            f"{name!r} is not a file or folder, and the Hugging Face hub is unreachable to load it as a "
            "dataset: pass a .txt/.jsonl file or folder, or an embedded corpus ('shakespeare', 'fortunes', 'pydoc')"
        )
    dataset_name, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(dataset_name, config or None, split=split, streaming=max_documents is not None)
    except Exception as err:  # datasets raises many kinds
        raise LensError(f"cannot load dataset {name!r} split {split!r}: {first_line(err)}") from None
    docs = []
    for i, row in enumerate(ds):
        if max_documents is not None and i >= max_documents:
            break
        if text_field not in row:
            raise LensError(f"dataset {name!r} has no field {text_field!r} (found {sorted(row)[:5]}): pass --text-field")
        docs.append(Document(f"{dataset_name}[{i}]", str(row[text_field])))
    return docs


# --- splitting ---------------------------------------------------------------------------
def split_documents(docs: Sequence[Document], split: str = "train", *, held_out: float = HELD_OUT,
                    seed: int = SPLIT_SEED) -> list[Document]:
    """The ``"train"``, ``"heldout"`` or ``"all"`` part of ``docs``, split by document.

    ``held_out``: fraction of documents held out (at least one when there are two or more and the
    fraction is positive); chosen by a permutation seeded with ``seed``, so train and held-out
    never share a document and the split is the same on every run. A single document is split
    by position instead: its last ``held_out`` fraction of characters (at a line break) is held out."""
    if split not in SPLITS:
        raise LensError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if not 0.0 <= held_out < 1.0:
        raise LensError(f"held-out fraction {held_out} is out of range: use 0 <= fraction < 1")
    docs = list(docs)
    if split == "all" or held_out == 0.0:
        if split == "heldout":
            raise LensError("the held-out split is empty with a held-out fraction of 0: pass a positive fraction")
        return docs
    if len(docs) == 1:
        doc = docs[0]
        cut = int(len(doc.text) * (1.0 - held_out))
        newline = doc.text.rfind("\n", 0, cut)
        cut = newline + 1 if newline > 0 else cut
        part = doc.text[:cut] if split == "train" else doc.text[cut:]
        return [Document(f"{doc.name}[{split}]", part)]
    n_held = min(len(docs) - 1, max(1, round(held_out * len(docs))))
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(docs), generator=gen).tolist()
    held = set(order[:n_held])
    return [d for i, d in enumerate(docs) if (i in held) == (split == "heldout")]


def split_source(source: str | os.PathLike, split: str = "train", *, held_out: float = HELD_OUT,
                 seed: int = SPLIT_SEED, text_field: str = "text", hf_split: str = "train") -> list[Document]:
    """:func:`load_documents` then :func:`split_documents`; a mixture's parts are split one by one (so its
    held-out documents are each part's held-out documents), named ``part/document``."""
    parts = parse_mixture(source)
    if parts is None:
        return split_documents(load_documents(source, text_field=text_field, hf_split=hf_split), split,
                               held_out=held_out, seed=seed)
    return [Document(f"{name}/{d.name}", d.text) for name, _ in parts
            for d in split_source(name, split, held_out=held_out, seed=seed, text_field=text_field, hf_split=hf_split)]
