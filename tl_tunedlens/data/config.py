"""Data settings: one dataclass, the way :class:`~tl_tunedlens.training.config.TrainConfig` is built.

:class:`DataConfig` says which text a command reads and how it is cut: the source (``--data``), its
train / held-out split by document, and the sequence length. The ``train``, ``eval`` and ``tokenize``
flags, their defaults and help are generated from its fields (:mod:`tl_tunedlens.cli.options`), the
demo takes its defaults, and the library's loaders (:func:`~tl_tunedlens.data.tokens.load_tokens`,
:func:`~tl_tunedlens.data.documents.split_documents`) default to the same constants, defined once here.
:meth:`DataConfig.check` runs the checks that need no model; :meth:`DataConfig.load` reads the tokens.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..core.options import check_option, field_kind, option
from ..errors import LensError

if TYPE_CHECKING:
    from .tokens import TokenData

#: the embedded default text (:mod:`.corpora`): two kinds of English in equal shares, Shakespeare's plays
#: and the BSD fortune files (measured against Shakespeare alone in docs/benchmarks.md)
DEFAULT_CORPUS = "shakespeare+fortunes"
SPLITS = ("train", "heldout", "all")
#: tokens per sequence when neither ``--seq-len`` nor a token store says otherwise
SEQ_LEN = 256
#: the fraction of documents held out from training, and the seed of that split
HELD_OUT = 0.1
SPLIT_SEED = 0


@dataclass
class DataConfig:
    """Which text to read and how to cut it (defaults: the embedded Shakespeare + fortunes mixture, training documents, 256 tokens)."""

    data: str = field(default=DEFAULT_CORPUS, metadata=option(
        "an embedded corpus ('shakespeare', 'fortunes', or 'pydoc', kept for evaluation), a mixture "
        "('shakespeare+fortunes', weights as 'shakespeare:0.7+fortunes:0.3'), a .txt file, a folder of .txt files, a .jsonl file, a token store "
        "(tl-tunedlens tokenize) or a Hugging Face dataset name[:config] (needs the hub)"))
    text_field: str = field(default="text", metadata=option("field holding the text in .jsonl / datasets"))
    hf_split: str = field(default="train", metadata=option("split of a Hugging Face dataset"))
    split: str = field(default="train", metadata=option(
        "part of the documents to use; train and heldout never share a document", choices=SPLITS))
    held_out: float = field(default=HELD_OUT, metadata=option(
        "fraction of documents held out from training", min=0.0, below=1.0))
    split_seed: int = field(default=SPLIT_SEED, metadata=option("seed of the document split"))
    seq_len: int | None = field(default=None, metadata=option(
        f"tokens per sequence, <= the model's n_ctx (default: {SEQ_LEN}, or a token store's own; the paper used 2048)",
        min=2, unit="tokens"))

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            kind, _, optional = field_kind(hints[f.name])
            value = getattr(self, f.name)
            if not (value is None and optional):
                check_option(f.name, value, f.metadata, kind)

    @property
    def is_store(self) -> bool:
        """Whether :attr:`data` is a token store folder."""
        from .store import is_store

        return is_store(self.data)

    def resolved(self) -> "DataConfig":
        """This config with :attr:`seq_len` made definite: a token store's own (``seq_len``, if given, must
        agree), else ``SEQ_LEN``."""
        if self.is_store:
            from .store import read_manifest

            stored = read_manifest(self.data)["seq_len"]
            if self.seq_len not in (None, stored):
                raise LensError(f"{self.data} holds sequences of {stored} tokens, not --seq-len {self.seq_len}: "
                                "drop --seq-len or tokenize again")
            return dataclasses.replace(self, seq_len=stored)
        return self if self.seq_len is not None else dataclasses.replace(self, seq_len=SEQ_LEN)

    def check(self) -> None:
        """The checks that need no model: a missing file or folder, a damaged token store or its split."""
        from .documents import check_source
        from .store import check_store

        if self.is_store:
            check_store(self.data, split=self.split)
        else:
            check_source(self.data)

    def load(self, tokenizer, *, max_tokens: int | None = None, n_ctx: int | None = None,
             split: str | None = None) -> "TokenData":
        """The tokens of :attr:`data` (its :attr:`split`, or ``split``), at most ``max_tokens`` of them. A token
        store is memory-mapped, not read (``max_tokens``: only its first sequences)."""
        from .store import open_store
        from .tokens import load_tokens

        cfg = self.resolved()
        if cfg.is_store:
            return open_store(cfg.data, tokenizer, seq_len=cfg.seq_len, split=split or cfg.split, max_tokens=max_tokens)
        return load_tokens(cfg.data, tokenizer, cfg.seq_len, split=split or cfg.split, held_out=cfg.held_out,
                           seed=cfg.split_seed, text_field=cfg.text_field, hf_split=cfg.hf_split,
                           max_tokens=max_tokens, n_ctx=n_ctx)

    def split_info(self) -> dict:
        """How the documents are chosen, as recorded with a lens or a token store."""
        return {"data": str(self.data), "split": self.split, "held_out": self.held_out, "split_seed": self.split_seed}

