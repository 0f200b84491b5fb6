"""Token sequences for training and evaluating lenses: documents -> tokens -> fixed-length sequences.

:func:`tokenize` joins documents with the tokenizer's EOS token and cuts the stream into
``[n, seq_len]`` sequences, and records bytes per token so metrics can be shown in bits per byte.
:func:`load_tokens` is the whole path, load -> split -> tokenise, in one call.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from ..errors import LensError
from .documents import Document, load_documents, split_documents


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

    @property
    def n_tokens(self) -> int:
        return int(self.sequences.numel())

    @property
    def seq_len(self) -> int:
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


def tokenize(docs: Sequence[Document], tokenizer, seq_len: int, *, max_tokens: int | None = None,
             n_ctx: int | None = None, source: str = "") -> TokenData:
    """Tokenise ``docs`` (no special tokens), join them with EOS, cut into ``[n, seq_len]``.

    Documents are tokenised in order until ``max_tokens`` tokens are reached (all when None);
    the remainder shorter than a sequence is dropped. ``n_ctx``: the model's context, checked
    against ``seq_len``. Raises ``LensError`` when the data is shorter than one sequence."""
    if tokenizer is None:
        raise LensError("the model has no tokenizer: load it with a tokenizer (e.g. tl_tunedlens.load_model)")
    if seq_len < 2:
        raise LensError(f"sequence length {seq_len} is too short: use at least 2")
    if n_ctx is not None and seq_len > n_ctx:
        raise LensError(f"sequence length {seq_len} exceeds the model's context n_ctx={n_ctx}: pass --seq-len <= {n_ctx}")
    eos = eos_token_id(tokenizer)
    ids: list[int] = []
    n_bytes = n_text_tokens = 0
    used = []
    for doc in docs:
        if max_tokens is not None and len(ids) >= max_tokens:
            break
        tok = tokenizer(doc.text, add_special_tokens=False, verbose=False)["input_ids"]
        if not tok:
            continue
        if ids:
            ids.append(eos)
        ids.extend(tok)
        n_bytes += len(doc.text.encode("utf-8"))
        n_text_tokens += len(tok)
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


def load_tokens(source: str | os.PathLike, tokenizer, seq_len: int, *, split: str = "train",
                held_out: float = 0.1, seed: int = 0, text_field: str = "text", hf_split: str = "train",
                max_tokens: int | None = None, n_ctx: int | None = None) -> TokenData:
    """``load_documents`` -> ``split_documents`` -> ``tokenize`` in one call (see those for the arguments)."""
    docs = split_documents(load_documents(source, text_field=text_field, hf_split=hf_split), split,
                           held_out=held_out, seed=seed)
    data = tokenize(docs, tokenizer, seq_len, max_tokens=max_tokens, n_ctx=n_ctx, source=f"{source} [{split}]")
    data.split = {"data": str(source), "split": split, "held_out": held_out, "split_seed": seed}
    return data


def bits_per_byte(nats_per_token: float, bytes_per_token: float) -> float:
    """Convert nats per token to bits per byte: ``nats / bytes_per_token / ln 2``."""
    return float(nats_per_token) / float(bytes_per_token) / math.log(2)
