"""Token sequences for training and evaluating lenses: documents -> tokens -> fixed-length sequences.

Two ways to cut ``[n, seq_len]`` sequences from documents, both recording bytes per token so metrics
can be shown in bits per byte:

- :func:`tokenize` joins the documents, in order, with the tokenizer's EOS token and cuts the stream
  (with ``max_tokens``, only the first documents are read);
- :func:`sample_tokens` draws a ``max_tokens`` sample spread over *all* the documents: each document is
  cut into pieces of about one sequence of text (at line breaks), the pieces are visited in a seeded
  order that interleaves the documents in proportion to their length, and only the pieces visited are
  tokenised (a long corpus is never tokenised whole). A piece long enough gives one sequence, its first
  ``seq_len`` tokens; shorter ones are joined with EOS as in :func:`tokenize`.

:func:`load_tokens` is the whole path, load -> split -> tokenise (``sample="spread"`` by default when
``max_tokens`` is given), in one call.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from ..errors import LensError
from .config import HELD_OUT, SPLIT_SEED
from .documents import Document, split_source
from .mixture import mixture_counts, parse_mixture


@dataclass
class TokenData:
    """Token sequences cut from a joined document stream.

    ``sequences``: ``[n_seq, seq_len]`` token ids; ``bytes_per_token``: UTF-8 bytes of the text
    per token (EOS separators excluded), to turn nats per token into bits per byte;
    ``documents``: names of the documents the tokens came from; ``source``: where they came from
    (``"shakespeare [train]"``); ``split``: how the documents were chosen (source, split, held-out
    fraction, seed), recorded with a trained lens."""

    sequences: Int[Tensor, "n_seq seq_len"]
    bytes_per_token: float
    documents: list[str]
    source: str = ""
    split: dict[str, Any] | None = None
    origins: list[str] | None = None  # the document each sequence starts in (sample_tokens)

    def sequences_per_document(self) -> dict[str, int]:
        """How many sequences start in each document (every document once when unknown)."""
        if self.origins is None:
            return {name: 0 for name in self.documents}
        return {name: self.origins.count(name) for name in self.documents}

    @property
    def n_tokens(self) -> int:
        """Total tokens, ``n_seq * seq_len``."""
        return int(self.sequences.numel())

    @property
    def seq_len(self) -> int:
        """Tokens per sequence."""
        return int(self.sequences.shape[1])

    def __len__(self) -> int:
        return int(self.sequences.shape[0])

    def info(self) -> dict[str, Any]:
        """What a trained lens records about its data (JSON-ready)."""
        return {**(self.split or {"data": self.source}), "documents": len(self.documents),
                "bytes_per_token": self.bytes_per_token}


# --- tokenising --------------------------------------------------------------------------
def eos_token_id(tokenizer) -> int:
    """The tokenizer's end-of-sequence id, which joins documents; a one-line error if it has none."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise LensError("the tokenizer has no EOS token to join documents with: use a model whose tokenizer defines one")
    return int(eos)


def join_documents(docs: Iterable[Document], tokenizer) -> Iterator[tuple[Document, list[int], int]]:
    """The joined token stream, one document at a time: ``(document, its ids preceded by EOS unless it is
    the first, its own token count)``; documents without tokens are skipped (no special tokens added)."""
    eos, first = eos_token_id(tokenizer), True
    for doc in docs:
        tok = tokenizer(doc.text, add_special_tokens=False, verbose=False)["input_ids"]
        if tok:
            yield doc, (tok if first else [eos, *tok]), len(tok)
            first = False


def tokenize(docs: Sequence[Document], tokenizer, seq_len: int, *, max_tokens: int | None = None,
             n_ctx: int | None = None, source: str = "") -> TokenData:
    """Tokenise ``docs`` (no special tokens), join them with EOS, cut into ``[n, seq_len]``.

    Documents are tokenised in order until ``max_tokens`` tokens are reached (all when None);
    the remainder shorter than a sequence is dropped. ``n_ctx``: the model's context, checked
    against ``seq_len``. Raises ``LensError`` when the data is shorter than one sequence."""
    _check_seq_len(tokenizer, seq_len, n_ctx)
    ids: list[int] = []
    n_bytes = n_text_tokens = 0
    used = []
    for doc, piece, n_tok in join_documents(docs, tokenizer):
        if max_tokens is not None and len(ids) >= max_tokens:
            break
        ids.extend(piece)
        n_bytes += len(doc.text.encode("utf-8"))
        n_text_tokens += n_tok
        used.append(doc.name)
    if max_tokens is not None:
        ids = ids[: max(int(max_tokens), seq_len)]
    n_seq = len(ids) // seq_len
    if n_seq == 0:
        raise LensError(
            f"the data has {len(ids)} tokens, fewer than one sequence of {seq_len}: pass more text or a smaller --seq-len"
        )
    sequences = torch.tensor(ids[: n_seq * seq_len], dtype=torch.long).view(n_seq, seq_len)
    return TokenData(sequences, n_bytes / max(n_text_tokens, 1), used, source)


def _check_seq_len(tokenizer, seq_len: int, n_ctx: int | None) -> None:
    if tokenizer is None:
        raise LensError("the model has no tokenizer: load it with a tokenizer (e.g. tl_tunedlens.load_model)")
    if seq_len < 2:
        raise LensError(f"sequence length {seq_len} is too short: use at least 2")
    if n_ctx is not None and seq_len > n_ctx:
        raise LensError(f"sequence length {seq_len} exceeds the model's context n_ctx={n_ctx}: pass --seq-len <= {n_ctx}")


def _pieces(text: str, size: int) -> list[str]:
    """``text`` cut into pieces of ``size`` characters or a little more: each ends at the first line
    break after ``size`` characters, if one comes within half a piece."""
    out, start = [], 0
    while start < len(text):
        end = start + size
        newline = text.find("\n", end, end + size // 2)
        end = newline + 1 if newline >= 0 else end
        out.append(text[start:end])
        start = end
    return out


def _interleaved(docs: Sequence[Document], size: int, seed: int) -> list[tuple[str, str]]:
    """``(document name, piece)`` of every document in a seeded order that spreads each document's
    pieces evenly (in proportion to its length): piece ``k`` of ``n`` gets key ``(k + u) / n``."""
    gen = torch.Generator().manual_seed(int(seed))
    keyed = []
    for d, doc in enumerate(docs):
        pieces = _pieces(doc.text, size)
        order = torch.randperm(len(pieces), generator=gen).tolist()
        jitter = torch.rand(len(pieces), generator=gen).tolist()
        keyed += [((k + jitter[k]) / len(pieces), d, doc.name, pieces[i]) for k, i in enumerate(order)]
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [(name, piece) for _, _, name, piece in keyed]


def sample_tokens(docs: Sequence[Document], tokenizer, seq_len: int, max_tokens: int, *, seed: int = 0,
                  n_ctx: int | None = None, source: str = "") -> TokenData:
    """``max_tokens // seq_len`` sequences (at least one) spread over all of ``docs`` (see the module
    docstring); ``seed`` picks the pieces. Raises ``LensError`` when the data is shorter than one sequence."""
    _check_seq_len(tokenizer, seq_len, n_ctx)
    eos = eos_token_id(tokenizer)
    want = max(1, int(max_tokens) // seq_len)
    sample = "".join(doc.text[:4000] for doc in docs[:8])
    chars_per_token = len(sample) / max(1, len(tokenizer(sample, add_special_tokens=False, verbose=False)["input_ids"]))
    rows: list[list[int]] = []
    origins: list[str] = []
    stream: list[int] = []            # short pieces, joined with EOS
    stream_docs: list[str] = []
    used: set[str] = set()
    n_bytes = n_tokens = 0.0
    for name, piece in _interleaved(docs, max(1, int(1.3 * seq_len * chars_per_token)), seed):
        if len(rows) >= want:
            break
        tok = tokenizer(piece, add_special_tokens=False, verbose=False)["input_ids"]
        if not tok:
            continue
        kept = min(len(tok), seq_len)
        n_bytes += len(piece.encode("utf-8")) * kept / len(tok)
        n_tokens += kept
        if len(tok) >= seq_len:
            rows.append(tok[:seq_len])
            origins.append(name)
            used.add(name)
            continue
        if stream:
            stream.append(eos)
        stream.extend(tok)
        stream_docs.append(name)
        if len(stream) >= seq_len:
            rows.append(stream[:seq_len])
            origins.append(stream_docs[0])
            used.update(stream_docs)
            stream, stream_docs = [], []
    if not rows:
        raise LensError(f"the data has {len(stream)} tokens, fewer than one sequence of {seq_len}: "
                        "pass more text or a smaller --seq-len")
    return TokenData(torch.tensor(rows, dtype=torch.long), n_bytes / max(n_tokens, 1),
                     [doc.name for doc in docs if doc.name in used], source, origins=origins)


SAMPLES = ("spread", "first")


def load_tokens(source: str | os.PathLike, tokenizer, seq_len: int, *, split: str = "train",
                held_out: float = HELD_OUT, seed: int = SPLIT_SEED, text_field: str = "text", hf_split: str = "train",
                max_tokens: int | None = None, n_ctx: int | None = None, sample: str = "spread",
                sample_seed: int = 0) -> TokenData:
    """``load_documents`` -> ``split_documents`` -> tokens in one call (see those for the arguments).

    With ``max_tokens``, ``sample="spread"`` draws them across all documents (:func:`sample_tokens`,
    seeded by ``sample_seed``) and ``"first"`` reads the first documents in order (:func:`tokenize`);
    without it, every document is tokenised in order."""
    if sample not in SAMPLES:
        raise LensError(f"unknown sample {sample!r}: use one of {', '.join(SAMPLES)}")
    parts = parse_mixture(source)
    if parts is not None and max_tokens is not None:
        return _load_mixture(str(source), parts, tokenizer, seq_len, split=split, held_out=held_out, seed=seed,
                             text_field=text_field, hf_split=hf_split, max_tokens=max_tokens, n_ctx=n_ctx,
                             sample=sample, sample_seed=sample_seed)
    docs = split_source(source, split, held_out=held_out, seed=seed, text_field=text_field, hf_split=hf_split)
    where = f"{source} [{split}]"
    if max_tokens is not None and sample == "spread":
        data = sample_tokens(docs, tokenizer, seq_len, max_tokens, seed=sample_seed, n_ctx=n_ctx, source=where)
    else:
        data = tokenize(docs, tokenizer, seq_len, max_tokens=max_tokens, n_ctx=n_ctx, source=where)
    data.split = {"data": str(source), "split": split, "held_out": held_out, "split_seed": seed,
                  "sample": sample if max_tokens is not None else "all", "sample_seed": sample_seed}
    return data


def _load_mixture(source: str, parts: list[tuple[str, float]], tokenizer, seq_len: int, *, max_tokens: int,
                  sample_seed: int, **kwargs) -> TokenData:
    """Each part's share (:func:`~tl_tunedlens.data.mixture.mixture_counts`) of ``max_tokens // seq_len``
    sequences, loaded as its own source, then interleaved in an order seeded by ``sample_seed``."""
    n_seq = max(len(parts), int(max_tokens) // seq_len)
    loaded = [load_tokens(name, tokenizer, seq_len, max_tokens=count * seq_len, sample_seed=sample_seed, **kwargs)
              for (name, _), count in zip(parts, mixture_counts([w for _, w in parts], n_seq))]
    rows = torch.cat([data.sequences for data in loaded])
    origins = [f"{name}/{o}" for (name, _), data in zip(parts, loaded)
               for o in (data.origins or [data.documents[0]] * len(data))]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(int(sample_seed))).tolist()
    n_tokens = [data.n_tokens for data in loaded]
    bytes_per_token = sum(d.bytes_per_token * n for d, n in zip(loaded, n_tokens)) / sum(n_tokens)
    documents = [f"{name}/{doc}" for (name, _), data in zip(parts, loaded) for doc in data.documents]
    split = {**loaded[0].split, "data": source, "mixture": {name: round(w, 6) for name, w in parts},
             "mixture_sequences": {name: len(data) for (name, _), data in zip(parts, loaded)}}
    return TokenData(rows[order], bytes_per_token, documents, f"{source} [{kwargs['split']}]", split,
                     [origins[i] for i in order])


def bits_per_byte(nats_per_token: float, bytes_per_token: float) -> float:
    """Convert nats per token to bits per byte: ``nats / bytes_per_token / ln 2``."""
    return float(nats_per_token) / float(bytes_per_token) / math.log(2)
