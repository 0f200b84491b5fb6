"""One request of the explorer's page (:class:`Query`), its bounds (:class:`Limits`) and the statistics
the page offers; every field type- and bound-checked with a one-line :class:`~tl_tunedlens.errors.LensError`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import LensError

# statistics the page offers: name -> label; "token_*" are about the token the user chose
STAT_CHOICES: dict[str, str] = {
    "kl": "KL(output || layer), nats",
    "entropy": "entropy, nats",
    "ce": "cross-entropy of the next token, nats",
    "rank": "rank of the next token",
    "prob": "probability of the next token",
    "token_prob": "probability of a chosen token",
    "token_rank": "rank of a chosen token",
    "max_prob": "top-1 probability",
    "kl_step": "KL(layer l+1 || layer l), nats",
}
TYPED_TOKENS = {"token": "chosen token", "diff_a": "token A", "diff_b": "token B"}  # Query field -> its name
NEED_TOKEN = "type a token under 'chosen token' to see its probability or rank"


@dataclass(frozen=True)
class Limits:
    """Bounds on one request: characters and tokens of the text, top-k, characters of a typed token."""

    max_chars: int = 2000
    max_tokens: int = 128
    max_top_k: int = 20
    max_token_chars: int = 50

    def __post_init__(self) -> None:
        for name in ("max_chars", "max_tokens", "max_top_k", "max_token_chars"):
            if getattr(self, name) < 1:
                raise LensError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Query:
    """One request of the page. ``position`` indexes the tokens (negative counts from the end);
    ``token``, ``diff_a``, ``diff_b`` are typed tokens (``""`` for none), kept exactly as typed."""

    text: str
    stat: str = "kl"
    top_k: int = 5
    position: int = -1
    token: str = ""
    diff_a: str = ""
    diff_b: str = ""
    lens: str = ""  # the tuned lens of the downloaded page ("" = the first)
    what: str = "all"  # "position": only what depends on the position (table, logit difference)

    @classmethod
    def from_json(cls, data: Any, limits: Limits) -> "Query":
        """A query from the page's JSON, every field type- and bound-checked (one-line errors)."""
        if not isinstance(data, Mapping):
            raise LensError("the request must be a JSON object")
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise LensError(f"unknown request field(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name, f in cls.__dataclass_fields__.items():
            if name not in data:
                continue
            value, kind = data[name], int if f.type == "int" else str
            if kind is int and isinstance(value, str) and value.strip().lstrip("-").isdigit():
                value = int(value)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise LensError(f"{name} must be {'an integer' if kind is int else 'a string'}, got {value!r}")
            if kind is str:
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:   # JSON may carry a lone surrogate (\ud800), which is no text
                    raise LensError(f"{name} holds a lone UTF-16 surrogate, which is not text: send valid "
                                    "Unicode") from None
            values[name] = value
        if "text" not in values:
            raise LensError("the request has no text")
        query = cls(**values)
        query.check(limits)
        return query

    def check(self, limits: Limits) -> None:
        """Bounds that need no model: text length, statistic, top-k, typed-token length."""
        if not self.text.strip():
            raise LensError("the text is empty: type a prompt")
        if len(self.text) > limits.max_chars:
            raise LensError(f"the text has {len(self.text)} characters; the limit is {limits.max_chars} "
                            "(shorten it, or restart serve with a larger --max-chars)")
        if self.what not in ("all", "position"):
            raise LensError(f"what must be 'all' or 'position', got {self.what!r}")
        if self.stat not in STAT_CHOICES:
            raise LensError(f"unknown statistic {self.stat!r}: use one of {', '.join(STAT_CHOICES)}")
        if not 1 <= self.top_k <= limits.max_top_k:
            raise LensError(f"top-k must be between 1 and {limits.max_top_k}, got {self.top_k}")
        for name in TYPED_TOKENS:
            if len(getattr(self, name)) > limits.max_token_chars:
                raise LensError(f"{name} is longer than {limits.max_token_chars} characters: type a single token")


