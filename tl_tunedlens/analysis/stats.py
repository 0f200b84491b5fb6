"""Statistics of next-token distributions given as log-probabilities (nats), textbook definitions.

Every function takes log-probs over the vocabulary in the last dimension (``-inf`` for a
probability of zero is fine) and reduces it away; results are in nats unless said otherwise.

- ``entropy(p) = -sum_v p(v) log p(v)``
- ``kl_divergence(p, q) = KL(p || q) = sum_v p(v) (log p(v) - log q(v))``  (forward KL, ``>= 0``)
- ``js_divergence(p, q) = KL(p || m) / 2 + KL(q || m) / 2`` with ``m = (p + q) / 2``  (``0..ln 2``)
- ``total_variation(p, q) = sum_v |p(v) - q(v)| / 2``  (a probability, ``0..1``)
- ``target_rank``: 1 + the number of tokens strictly more likely than the target (1 = top-1).
"""

from __future__ import annotations

import math

import torch
from beartype import beartype
from jaxtyping import Float, Int, jaxtyped
from torch import Tensor

LN2 = math.log(2.0)


def _plogp_diff(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``p (log p - log q)`` with the convention ``0 log 0 = 0`` (so ``-inf`` log-probs are fine)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))


@jaxtyped(typechecker=beartype)
def entropy(log_p: Float[Tensor, "*batch vocab"]) -> Float[Tensor, "*batch"]:
    """Shannon entropy (nats) of each distribution."""
    p = log_p.exp()
    return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1)


@jaxtyped(typechecker=beartype)
def kl_divergence(log_p: Float[Tensor, "*batch vocab"], log_q: Float[Tensor, "*batch vocab"]) -> Float[Tensor, "*batch"]:
    """Forward KL divergence ``KL(p || q)`` (nats), clamped at 0 against rounding."""
    return _plogp_diff(log_p, log_q).sum(-1).clamp_min(0.0)


@jaxtyped(typechecker=beartype)
def js_divergence(log_p: Float[Tensor, "*batch vocab"], log_q: Float[Tensor, "*batch vocab"]) -> Float[Tensor, "*batch"]:
    """Jensen-Shannon divergence (nats): symmetric, ``0 <= JS <= ln 2``."""
    log_m = torch.logaddexp(log_p, log_q) - LN2
    js = 0.5 * (_plogp_diff(log_p, log_m).sum(-1) + _plogp_diff(log_q, log_m).sum(-1))
    return js.clamp(0.0, LN2)


@jaxtyped(typechecker=beartype)
def total_variation(log_p: Float[Tensor, "*batch vocab"], log_q: Float[Tensor, "*batch vocab"]) -> Float[Tensor, "*batch"]:
    """Total variation distance ``sum |p - q| / 2`` (a probability, ``0..1``)."""
    return (0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)).clamp(0.0, 1.0)


@jaxtyped(typechecker=beartype)
def target_log_prob(log_p: Float[Tensor, "*batch vocab"], targets: Int[Tensor, "*batch"]) -> Float[Tensor, "*batch"]:
    """``log p(target)`` (nats); positions whose target is negative (no target) give NaN."""
    valid = targets >= 0
    out = log_p.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, out, torch.full_like(out, float("nan")))


@jaxtyped(typechecker=beartype)
def target_rank(log_p: Float[Tensor, "*batch vocab"], targets: Int[Tensor, "*batch"]) -> Int[Tensor, "*batch"]:
    """Rank of the target token: 1 + the number of tokens strictly more likely (1 = the top
    prediction; ties share the better rank). Positions without a target (negative) give 0."""
    valid = targets >= 0
    target = log_p.gather(-1, targets.clamp_min(0).unsqueeze(-1))
    rank = (log_p > target).sum(-1) + 1
    return torch.where(valid, rank, torch.zeros_like(rank))
