"""Mixtures of sources: ``--data shakespeare+fortunes`` (equal shares) or ``shakespeare:0.7+fortunes:0.3``.

A mixture is written as sources joined by ``+``, each optionally followed by ``:WEIGHT`` (a positive
number; the weights are normalised). Each part is split into train / held-out documents on its own
(:func:`~tl_tunedlens.data.documents.split_documents`), so a mixture's held-out documents are each
part's held-out documents. With a token count (``max_tokens``) each part gives its weight's share of
the sequences, drawn across its documents, and the sequences are interleaved in a seeded order; without
one, every part is read whole (the weights then play no part). Document names carry their part:
``fortunes/zippy[40]``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import LensError

SEPARATOR = "+"


def parse_mixture(source: str | os.PathLike) -> list[tuple[str, float]] | None:
    """``[(part, weight)]`` (weights summing to 1) when ``source`` is a mixture, else ``None`` (a path that
    exists is never a mixture). One-line errors for an empty part or a weight that is not a positive number."""
    text = str(source)
    if SEPARATOR not in text or Path(text).expanduser().exists():
        return None
    parts = []
    for raw in text.split(SEPARATOR):
        name, weight = raw.strip(), 1.0
        head, sep, tail = name.rpartition(":")
        if sep and _is_number(tail):
            name, weight = head.strip(), float(tail)
            if not (math.isfinite(weight) and weight > 0):
                raise LensError(f"mixture weight {tail!r} of {name!r} must be a positive number, e.g. "
                                "shakespeare:0.7+fortunes:0.3")
        if not name:
            raise LensError(f"the mixture {text!r} has an empty part: write sources joined by '+', e.g. "
                            "shakespeare+fortunes")
        parts.append((name, weight))
    if len({name for name, _ in parts}) != len(parts):
        raise LensError(f"the mixture {text!r} names a source twice: give each source once, with a weight")
    total = sum(w for _, w in parts)
    return [(name, w / total) for name, w in parts]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def mixture_counts(weights: list[float], total: int) -> list[int]:
    """``total`` split by ``weights`` into whole counts (largest remainders; every part at least one
    when ``total`` allows)."""
    raw = [w * total for w in weights]
    counts = [int(math.floor(r)) for r in raw]
    for j in sorted(range(len(raw)), key=lambda j: counts[j] - raw[j])[: total - sum(counts)]:
        counts[j] += 1
    for j in range(len(counts)):   # a part with a tiny weight still gives one sequence
        if counts[j] == 0 and total >= len(counts):
            k = max(range(len(counts)), key=lambda i: counts[i])
            counts[k] -= 1
            counts[j] = 1
    return counts
