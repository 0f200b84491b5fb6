"""A token store on disk: fixed-length sequences written once, read row by row through a memory map.

``tl-tunedlens tokenize --data SRC --out DIR --seq-len L`` (:func:`write_store`) tokenises the documents
of one split in order, joined with EOS exactly as :func:`~tl_tunedlens.data.tokens.tokenize` does, and
streams the rows to disk, so the token ids of a corpus never sit in memory at once. ``DIR`` holds:

- ``tokens.npy``: a ``[count, seq_len]`` numpy array (``uint16`` when the vocabulary fits, else ``uint32``);
- ``manifest.json``: the tokenizer's hash and name, ``seq_len``, ``count``, the document split, bytes
  per token, the digest of the ids (the one :func:`~tl_tunedlens.training.order.data_digest` computes,
  so a checkpoint knows its data) and the SHA-256 of every shard of ``tokens.npy``'s rows (``shards``:
  ``SHARD_BYTES`` of file each).

**What is read is verified.** :func:`open_store` checks the file's header and size against the manifest
before mapping it (a truncated or padded file is a one-line error), and every shard's SHA-256 is checked
the first time a row in it is read (:class:`StoredSequences`): an edited id is refused before it is
trained on. Hashing runs at ~1.7 GB/s here, so the check costs ~0.6 s per GB of store, paid once per
shard as the shards are first read, not at open. A store of format version 1 (no shard digests) is
verified whole at open against its ids' digest instead (~12 s per GB: the ids are widened to int64).

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
VERSION = 2   # 2: per-shard SHA-256 of tokens.npy's rows (version 1 stores are read and verified whole)
#: bytes of ``tokens.npy``'s rows per verified shard
SHARD_BYTES = 64 * 2**20
_MANIFEST_KEYS = {"seq_len": int, "count": int, "digest": str, "tokenizer": dict, "bytes_per_token": (int, float),
                  "split": dict, "documents": list}
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


class ShardCheck:
    """The SHA-256 of each shard of ``rows`` rows of a store's array, checked the first time a row of
    the shard is read (a one-line error naming the store when a shard was changed)."""

    def __init__(self, array: np.ndarray, rows: int, digests: list[str], source: str):
        self.array, self.rows, self.digests, self.source = array, int(rows), list(digests), source
        self.checked: set[int] = set()

    def rows_read(self, rows: np.ndarray) -> None:
        """Check every shard holding one of ``rows`` (row numbers of the whole array) not checked yet."""
        for shard in np.unique(np.asarray(rows, dtype=np.int64) // self.rows).tolist():
            if shard not in self.checked:
                block = np.ascontiguousarray(self.array[shard * self.rows:(shard + 1) * self.rows])
                if hashlib.sha256(block.data).hexdigest() != self.digests[shard]:
                    raise LensError(f"{self.source}: rows {shard * self.rows}..{shard * self.rows + len(block) - 1} "
                                    f"of {TOKENS} do not match the manifest's SHA-256 (the file was changed or "
                                    "damaged): tokenize the data again")
                self.checked.add(shard)


class StoredSequences:
    """``[n_seq, seq_len]`` token ids on disk, read on indexing: ``seqs[[3, 9]]``, ``seqs[2:5]`` or
    ``seqs[4]`` give int64 tensors holding only those rows. Quacks enough like a tensor for training and
    evaluation (``len``, ``shape``, ``ndim``, ``numel``) and carries the ids' ``digest``. With ``check``
    (:class:`ShardCheck`), every shard is verified the first time a row of it is read."""

    ndim = 2

    def __init__(self, array: np.ndarray, digest: str | None = None, check: ShardCheck | None = None):
        self.array, self._digest, self._check = array, digest, check

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
        if self._check is not None:
            self._check.rows_read(np.arange(len(self))[index])
        return torch.from_numpy(np.asarray(self.array[index], dtype=np.int64))

    def head(self, n: int) -> "StoredSequences":
        """The first ``n`` rows (no copy; their digest is computed when asked for; shards still checked)."""
        return self if n >= len(self) else StoredSequences(self.array[:n], check=self._check)

    @property
    def digest(self) -> str:
        """:func:`~tl_tunedlens.training.order.data_digest` of the ids (from the manifest, or read in blocks)."""
        if self._digest is None:
            if self._check is not None:
                self._check.rows_read(np.arange(len(self)))
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
    shard_rows = max(1, SHARD_BYTES // (seq_len * dtype.itemsize))
    shards: list[str] = []
    shard = hashlib.sha256()
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
                    narrow = block.astype(dtype)
                    raw.write(narrow.tobytes())
                    for i in range(full):   # the shards' digests, split at shard boundaries
                        shard.update(narrow[i].tobytes())
                        if (rows + i + 1) % shard_rows == 0:
                            shards.append(shard.hexdigest())
                            shard = hashlib.sha256()
                    rows += full
                    del pending[:full * seq_len]
        if rows == 0:
            raise LensError(f"the data has {len(pending)} tokens, fewer than one sequence of {seq_len}: "
                            "pass more text or a smaller --seq-len")
        if rows % shard_rows:
            shards.append(shard.hexdigest())
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
            "shards": {"rows": shard_rows, "sha256": shards},
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
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version", 0) > VERSION:
        raise LensError(f"{path}/{MANIFEST} is not a token store this version reads: make it again with tl-tunedlens tokenize")
    for key, kind in _MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            what = kind.__name__ if isinstance(kind, type) else "number"
            raise LensError(f"{path}/{MANIFEST}: {key!r} is missing or not a {what}: the store is damaged, "
                            "tokenize the data again")
    return manifest


def _map_tokens(path: Path, manifest: dict) -> np.ndarray:
    """``tokens.npy`` memory-mapped read-only, after checking its header and size against the manifest."""
    file = path / str(manifest.get("file", TOKENS))
    count, seq_len = manifest.get("count"), manifest.get("seq_len")
    damaged = "the store is damaged: tokenize the data again"
    try:
        with open(file, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(fh)
            offset, size = fh.tell(), os.fstat(fh.fileno()).st_size
    except (OSError, ValueError) as err:
        raise LensError(f"{file} is missing or not a .npy file ({first_line(err, 120)}): {damaged}") from None
    if shape != (count, seq_len) or fortran or dtype.name != manifest.get("dtype", dtype.name):
        raise LensError(f"{file} holds {shape} {dtype.name}, not the manifest's ({count}, {seq_len}) "
                        f"{manifest.get('dtype')}: {damaged}")
    expected = offset + count * seq_len * dtype.itemsize
    if size != expected:
        raise LensError(f"{file} has {size} bytes, not the {expected} its header and the manifest say "
                        f"({'truncated' if size < expected else 'extra bytes'}): {damaged}")
    return np.load(file, mmap_mode="r")


def check_store(path: str | os.PathLike, *, seq_len: int | None = None, split: str | None = None) -> dict:
    """The checks of the store at ``path`` that need no tokenizer (its manifest, ``seq_len`` and ``split``
    when given, and ``tokens.npy``'s header and size); returns the manifest. One-line errors."""
    path = Path(path).expanduser()
    manifest = read_manifest(path)
    if seq_len is not None and seq_len != manifest["seq_len"]:
        raise LensError(f"{path} holds sequences of {manifest['seq_len']} tokens, not --seq-len {seq_len}: "
                        "drop --seq-len or tokenize again")
    stored_split = manifest["split"].get("split")
    if split is not None and stored_split is not None and split != stored_split:
        raise LensError(f"{path} holds the '{stored_split}' documents, not '{split}': pass --split {stored_split} "
                        f"or tokenize the '{split}' documents into another folder")
    _map_tokens(path, manifest)
    return manifest


def open_store(path: str | os.PathLike, tokenizer, *, seq_len: int | None = None, split: str | None = None,
               max_tokens: int | None = None) -> TokenData:
    """The store at ``path`` as :class:`~tl_tunedlens.data.tokens.TokenData` (memory-mapped, read-only).

    Refused with a one-line error when it was made with another tokenizer than ``tokenizer``, or
    ``seq_len`` / ``split`` (when given) differ from its own (:func:`check_store`). ``max_tokens``: only
    its first sequences."""
    path = Path(path).expanduser()
    manifest = check_store(path, seq_len=seq_len, split=split)
    made_with, ours = manifest["tokenizer"], tokenizer_hash(tokenizer)
    if made_with["hash"] != ours:
        raise LensError(f"{path} was tokenised with another tokenizer ({made_with['name']}, hash {made_with['hash']}) "
                        f"than this model's ({_tokenizer_name(tokenizer)}, hash {ours}): run tl-tunedlens tokenize "
                        "again with this --model")
    array = _map_tokens(path, manifest)
    check = None
    if "shards" in manifest:
        check = ShardCheck(array, manifest["shards"]["rows"], manifest["shards"]["sha256"], str(path))
    elif StoredSequences(array).digest != manifest["digest"]:   # version 1: no shard digests, verified whole
        raise LensError(f"{path}/{manifest['file']} does not match the manifest's digest (the file was changed or "
                        "damaged): tokenize the data again")
    sequences = StoredSequences(array, manifest["digest"], check)
    if max_tokens is not None:
        sequences = sequences.head(max(1, -(-int(max_tokens) // manifest["seq_len"])))
    return TokenData(sequences, float(manifest["bytes_per_token"]), list(manifest["documents"]), str(path),  # type: ignore[arg-type]
                     split={**manifest["split"], "store": str(path), "store_digest": manifest["digest"]})
