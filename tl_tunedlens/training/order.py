"""The order in which a run reads its token sequences.

Every run reads one seeded stream of sequence indices: position ``k`` of the stream is element
``k mod n_seq`` of a permutation seeded with ``(seed, k // n_seq)`` (one fresh permutation per
epoch). The least-squares start takes positions ``0 .. n_fit - 1`` and step ``s`` the next
``per_step`` positions after it, so the start and the KL steps never share a sequence until the
data runs out (then a new epoch begins). The order depends only on the data size and the config,
so a resumed run reads exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib

import torch
from jaxtyping import Int
from torch import Tensor


def stream_positions(n_seq: int, start: int, count: int, seed: int) -> list[int]:
    """Sequence indices at stream positions ``start`` to ``start + count - 1`` (the seeded stream)."""
    out: list[int] = []
    perms: dict[int, Tensor] = {}
    for k in range(start, start + count):
        epoch, i = divmod(k, n_seq)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n_seq, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(perms[epoch][i]))
    return out


def step_sequences(n_seq: int, per_step: int, step: int, seed: int, offset: int = 0) -> list[int]:
    """Indices of the sequences used at ``step``: the ``per_step`` stream positions after ``offset``
    (the least-squares sample) and the earlier steps."""
    return stream_positions(n_seq, offset + step * per_step, per_step, seed)


def data_digest(sequences: Int[Tensor, "n_seq seq_len"]) -> str:
    """A short hash of the token ids, recorded in checkpoints so a resume checks it has the same data."""
    return hashlib.sha256(sequences.to("cpu", torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]
