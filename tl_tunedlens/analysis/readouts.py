"""Readouts of a prediction trajectory: logit differences, position slices and prediction depth.

A base of :class:`~tl_tunedlens.analysis.trajectory.PredictionTrajectory` (its methods are used as
``traj.logit_diff(" Paris", " London")``, ``traj.slice_positions(slice(-3, None))``,
``traj.prediction_depth()``):

- ``logit_diff(a, b)``: per layer x prompt x position, ``logit(a) - logit(b)`` of the lens, in nats; it
  equals ``log p(a) - log p(b)`` (the normaliser cancels), so it is read from the lens's log-probs:
  build the trajectory with ``watch=[a, b]`` (or ``keep_log_probs=True``);
- ``slice_positions(positions)`` / ``take(batch=, positions=)``: the same trajectory on some positions
  (an index, a slice, a list or a tensor of indices) or prompts;
- ``prediction_depth()``: per token, the first lens layer from which the lens's top-1 equals the
  model's own top-1 and stays equal up to the output (``n_layers`` = only the output itself).
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import LensError

#: fields indexed ``[batch pos]``; every other tensor field is ``[row batch pos ...]``
_BATCH_FIRST = ("tokens", "targets")


def watch_ids(watch: Sequence[int], vocab: int) -> list[int]:
    """``watch`` as a list of distinct token ids in ``0..vocab-1`` (order kept)."""
    ids = list(dict.fromkeys(int(t) for t in watch))
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise LensError(f"watched token id {bad[0]} is out of range: the vocabulary has {vocab} tokens")
    return ids


def single_token_id(tokenizer: Any, token: int | str) -> int:
    """``token`` if it is an id, else the id of the string ``token``, which must be exactly one token of
    ``tokenizer`` (mind the leading space: ``" Paris"``); a one-line error otherwise."""
    if not isinstance(token, str):
        return int(token)
    if tokenizer is None or not hasattr(tokenizer, "encode"):
        raise LensError(f"no tokenizer to read {token!r}: pass a token id")
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise LensError(f"{token!r} is {len(ids)} tokens, not one: pass a single token (e.g. ' Paris', with its space)")
    return int(ids[0])


def _as_index(index: int | slice | Sequence[int] | Tensor | None) -> slice | Tensor:
    if index is None:
        return slice(None)
    if isinstance(index, slice):
        return index
    if isinstance(index, int):
        index = [index]
    return torch.as_tensor(index, dtype=torch.long).reshape(-1)


class TrajectoryReadouts:
    """Logit differences, position slices and prediction depth (see the module docstring)."""

    tokens: Tensor
    top_k_indices: Tensor
    log_probs: Tensor | None
    watched: list[int]
    watched_log_probs: Tensor | None
    tokenizer: Any

    def take(self, *, batch: int | slice | Sequence[int] | Tensor | None = None,
             positions: int | slice | Sequence[int] | Tensor | None = None) -> Any:
        """The trajectory restricted to prompts ``batch`` and positions ``positions`` (each an index, a
        slice, a list or a tensor of indices; ``None`` keeps all), every statistic sliced alike."""
        b, p = _as_index(batch), _as_index(positions)
        n_pos = self.tokens.shape[1]
        if isinstance(p, Tensor) and p.numel() and not (-n_pos <= int(p.min()) and int(p.max()) < n_pos):
            raise LensError(f"positions {p.tolist()} are out of range for {n_pos} positions")
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                changes[f.name] = value[b][:, p] if f.name in _BATCH_FIRST else value[:, b][:, :, p]
        return replace(self, **changes)

    def slice_positions(self, positions: int | slice | Sequence[int] | Tensor) -> Any:
        """The trajectory at ``positions`` only (an index, a slice, a list or a tensor of indices)."""
        return self.take(positions=positions)

    def token_id(self, token: int | str) -> int:
        """A token id as given, or the id of a string that is exactly one token (see :func:`single_token_id`)."""
        return single_token_id(self.tokenizer, token)

    def token_log_probs(self, token: int | str) -> Float[Tensor, "layer batch pos"]:
        """Log-prob (nats) of ``token`` at every layer, prompt and position."""
        token_id = self.token_id(token)
        if self.watched_log_probs is not None and token_id in self.watched:
            return self.watched_log_probs[..., self.watched.index(token_id)]
        if self.log_probs is not None:
            return self.log_probs[..., token_id]
        raise LensError(f"token {token!r} was not watched: build the trajectory with watch=[ids] "
                        "(e.g. PredictionTrajectory.from_model(lens, model, text, watch=[a, b])) or keep_log_probs=True")

    def logit_diff(self, token_a: int | str, token_b: int | str) -> Float[Tensor, "layer batch pos"]:
        """``logit(a) - logit(b)`` per layer x prompt x position (nats; ``= log p(a) - log p(b)``)."""
        return self.token_log_probs(token_a) - self.token_log_probs(token_b)

    def prediction_depth(self) -> Int[Tensor, "batch pos"]:
        """Per token, the first lens layer whose top-1 equals the model's own top-1 (the last row) and stays
        equal at every later layer; ``n_layers`` when only the output agrees."""
        top1 = self.top_k_indices[..., 0]
        agree = (top1 == top1[-1]).long()
        stays = agree.flip(0).cumprod(0).flip(0)        # stays[l] = 1 iff layers l..output all agree
        return len(top1) - stays.sum(0)
