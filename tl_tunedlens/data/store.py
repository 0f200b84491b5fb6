"""A token store on disk: fixed-length sequences written once, read row by row through a memory map.

``tl-tunedlens tokenize --data SRC --out DIR --seq-len L`` (:func:`write_store`) tokenises the documents
of one split in order, joined with EOS exactly as :func:`~tl_tunedlens.data.tokens.tokenize` does, and
streams the rows to disk, so the token ids of a corpus never sit in memory at once. ``DIR`` holds:

- ``tokens.npy``: a ``[count, seq_len]`` numpy array (``uint16`` when the vocabulary fits, else ``uint32``);
- ``manifest.json``: the tokenizer's hash and name, ``seq_len``, ``count``, the document split, bytes
  per token and the digest of the ids (the one :func:`~tl_tunedlens.training.order.data_digest` computes,
  so a checkpoint knows its data).

The folder appears all at once (written in a hidden staging folder, then renamed). :func:`open_store`
maps it read-only (every rank of a ``torchrun`` run opens the same files) and returns a
:class:`~tl_tunedlens.data.tokens.TokenData` whose ``sequences`` is a :class:`StoredSequences`: indexing it
reads only the rows asked for. A store made with another tokenizer is refused with a one-line error.

Why ``.npy`` and not the ``datasets`` Arrow cache: ``bench/bench_store.py`` measures both (random rows a
training step reads, and writing); the memory map is simpler, needs no extra package, and was faster here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from ..artifacts.files import write_json_atomic
from ..errors import LensError, first_line
from .documents import Document
from .tokens import TokenData, _check_seq_len, eos_token_id, join_documents

FORMAT = "tl_tunedlens token store"
VERSION = 1
MANIFEST = "manifest.json"
TOKENS = "tokens.npy"
#: keys of a fast tokenizer's JSON that do not change ``tokenizer(text, add_special_tokens=False)``
_IGNORED_KEYS = ("post_processor", "padding", "truncation", "decoder")


def tokenizer_hash(tokenizer) -> str:
    """A short hash of what turns text into ids here: the fast tokenizer's vocabulary, merges, normaliser
    and pre-tokeniser (its JSON less the post-processor, padding and decoder), else its vocabulary, plus
    the ids of a probe text and the EOS id that joins documents."""
    parts: list[Any] = [type(tokenizer).__name__ if not hasattr(tokenizer, "backend_tokenizer") else "fast"]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        parts.append({k: v for k, v in spec.items() if k not in _IGNORED_KEYS})
    elif hasattr(tokenizer, "get_vocab"):
        parts.append(sorted(tokenizer.get_vocab().items()))
    probe = "The quick brown fox, 1234 -- jumps?\n  Ünïcödé ok"
    parts += [tokenizer(probe, add_special_tokens=False, verbose=False)["input_ids"], eos_token_id(tokenizer)]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _tokenizer_name(tokenizer) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def _id_dtype(tokenizer) -> np.dtype:
    try:
        size = len(tokenizer)
    except TypeError:
        return np.dtype(np.uint32)
    return np.dtype(np.uint16 if size <= 2**16 else np.uint32)


class StoredSequences:
    """``[n_seq, seq_len]`` token ids on disk, read on indexing: ``seqs[[3, 9]]``, ``seqs[2:5]`` or
    ``seqs[4]`` give int64 tensors holding only those rows. Quacks enough like a tensor for training and
    evaluation (``len``, ``shape``, ``ndim``, ``numel``) and carries the ids' ``digest``."""

    ndim = 2

    def __init__(self, array: np.ndarray, digest: str | None = None):
        self.array, self._digest = array, digest

    @property
    def shape(self) -> torch.Size:
        """``(n_seq, seq_len)``."""
        return torch.Size(self.array.shape)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def numel(self) -> int:
        """Token ids in the store (``n_seq * seq_len``)."""
        return int(self.array.size)

    def __getitem__(self, index) -> Int[Tensor, "..."]:
        if isinstance(index, Tensor):
            index = index.tolist()
        return torch.from_numpy(np.asarray(self.array[index], dtype=np.int64))

    def head(self, n: int) -> "StoredSequences":
        """The first ``n`` rows (no copy; their digest is computed when asked for)."""
        return self if n >= len(self) else StoredSequences(self.array[:n])

    @property
    def digest(self) -> str:
        """:func:`~tl_tunedlens.training.order.data_digest` of the ids (from the manifest, or read in blocks)."""
        if self._digest is None:
            h = hashlib.sha256()
            for start in range(0, len(self), 4096):
                h.update(np.ascontiguousarray(self.array[start:start + 4096], dtype=np.int64).tobytes())
            self._digest = h.hexdigest()[:16]
        return self._digest


def is_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a token store's manifest."""
    return (Path(path).expanduser() / MANIFEST).is_file()


def write_store(docs: Iterable[Document], tokenizer, seq_len: int, out: str | os.PathLike, *,
                n_ctx: int | None = None, max_tokens: int | None = None, split: dict | None = None,
                source: str = "") -> dict:
    """Tokenise ``docs`` in order (EOS between documents, the remainder shorter than a sequence dropped;
    at most ``max_tokens`` tokens) into a new store folder ``out``; returns its manifest. ``split``: how
    the documents were chosen (recorded). Refuses an existing ``out``; leaves nothing behind on an error."""
    _check_seq_len(tokenizer, seq_len, n_ctx)
    out = Path(out).expanduser()
    if out.exists():
        raise LensError(f"{out} already exists: pass a new --out folder for the token store (or delete it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    eos, dtype = eos_token_id(tokenizer), _id_dtype(tokenizer)
    limit = np.iinfo(dtype).max
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        digest, rows, n_bytes, n_text, names = hashlib.sha256(), 0, 0, 0, []
        pending: list[int] = []
        cap = None if max_tokens is None else max(int(max_tokens), seq_len) // seq_len
        with open(staging / "rows.bin", "wb") as raw:
            for doc, piece, n_tok in join_documents(docs, tokenizer):
                if cap is not None and rows >= cap:
                    break
                pending.extend(piece)
                n_bytes, n_text = n_bytes + len(doc.text.encode("utf-8")), n_text + n_tok
                names.append(doc.name)
                full = len(pending) // seq_len
                if cap is not None:
                    full = min(full, cap - rows)
                if full:
                    block = np.asarray(pending[:full * seq_len], dtype=np.int64).reshape(full, seq_len)
                    if block.max() > limit or block.min() < 0:
                        raise LensError(f"token id {int(block.max())} does not fit the store's {dtype}: "
                                        "the tokenizer's length is wrong")
                    digest.update(block.tobytes())
                    raw.write(block.astype(dtype).tobytes())
                    rows += full
                    del pending[:full * seq_len]
        if rows == 0:
            raise LensError(f"the data has {len(pending)} tokens, fewer than one sequence of {seq_len}: "
                            "pass more text or a smaller --seq-len")
        with open(staging / TOKENS, "wb") as fh, open(staging / "rows.bin", "rb") as raw:
            np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                      "fortran_order": False, "shape": (rows, seq_len)})
            shutil.copyfileobj(raw, fh, 16 * 2**20)
            fh.flush()
            os.fsync(fh.fileno())
        (staging / "rows.bin").unlink()
        manifest = {
            "format": FORMAT, "version": VERSION, "file": TOKENS, "dtype": dtype.name, "seq_len": int(seq_len),
            "count": rows, "tokens": rows * int(seq_len), "digest": digest.hexdigest()[:16],
            "tokenizer": {"hash": tokenizer_hash(tokenizer), "name": _tokenizer_name(tokenizer), "eos": eos},
            "bytes_per_token": n_bytes / max(n_text, 1), "source": source, "split": split or {"data": source},
            "documents": names,
        }
        write_json_atomic(staging / MANIFEST, manifest)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of the store at ``path``; a one-line error when it is not one."""
    path = Path(path).expanduser()
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise LensError(f"{path} is not a token store ({first_line(err)}): make one with tl-tunedlens tokenize") from None
    if manifest.get("format") != FORMAT or manifest.get("version", 0) > VERSION:
        raise LensError(f"{path}/{MANIFEST} is not a token store this version reads: make it again with tl-tunedlens tokenize")
    return manifest


def open_store(path: str | os.PathLike, tokenizer, *, seq_len: int | None = None, split: str | None = None,
               max_tokens: int | None = None) -> TokenData:
    """The store at ``path`` as :class:`~tl_tunedlens.data.tokens.TokenData` (memory-mapped, read-only).

    Refused with a one-line error when it was made with another tokenizer than ``tokenizer``, or
    ``seq_len`` / ``split`` (when given) differ from its own. ``max_tokens``: only its first sequences."""
    path = Path(path).expanduser()
    manifest = read_manifest(path)
    made_with, ours = manifest["tokenizer"], tokenizer_hash(tokenizer)
    if made_with["hash"] != ours:
        raise LensError(f"{path} was tokenised with another tokenizer ({made_with['name']}, hash {made_with['hash']}) "
                        f"than this model's ({_tokenizer_name(tokenizer)}, hash {ours}): run tl-tunedlens tokenize "
                        "again with this --model")
    if seq_len is not None and seq_len != manifest["seq_len"]:
        raise LensError(f"{path} holds sequences of {manifest['seq_len']} tokens, not --seq-len {seq_len}: "
                        "drop --seq-len or tokenize again")
    stored_split = manifest["split"].get("split")
    if split is not None and stored_split is not None and split != stored_split:
        raise LensError(f"{path} holds the '{stored_split}' documents, not '{split}': pass --split {stored_split} "
                        f"or tokenize the '{split}' documents into another folder")
    array = np.load(path / manifest["file"], mmap_mode="r")
    if array.shape != (manifest["count"], manifest["seq_len"]):
        raise LensError(f"{path}/{manifest['file']} holds {array.shape}, not the manifest's "
                        f"({manifest['count']}, {manifest['seq_len']}): the store is damaged, tokenize again")
    sequences = StoredSequences(array, manifest["digest"])
    if max_tokens is not None:
        sequences = sequences.head(max(1, -(-int(max_tokens) // manifest["seq_len"])))
    return TokenData(sequences, float(manifest["bytes_per_token"]), list(manifest["documents"]), str(path),  # type: ignore[arg-type]
                     split={**manifest["split"], "store": str(path), "store_digest": manifest["digest"]})
