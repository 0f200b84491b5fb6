"""Inverting a lens: a residual vector whose lens decoding matches given log-probs.

``invert(lens, target, layer)`` looks for ``h`` (the residual stream a hook at that lens layer sees,
before the final norm) with ``lens.log_probs(h, layer) ~= target``, in two stages:

1. **Least-squares start.** The target log-probs (``-inf`` replaced by the row's lowest finite value
   minus 50 nats) are logits up to a constant, so the normalised residual ``x`` solves
   ``min ||x W_U + b_U + c - target||`` over ``x`` and a constant ``c`` (pseudo-inverse of
   ``[W_U; 1]``). ``ln_final`` is taken as the identity on that ``x`` (exact for a folded, unit-norm
   ``x``); the translator's affine map ``h' = h M + b`` is then undone with the pseudo-inverse of
   ``M`` (read from ``lens.transform`` itself, so any affine lens works).
2. **L-BFGS** on the forward KL ``KL(target || lens(h))`` (nats), summed over the batch.

Each row is independent; the result holds the residuals and the KL each reached. A target made by
the lens from a real residual is reached to rounding error (the tests ask for 1e-4 nats on tiny
models); the residual itself is not unique (the final norm forgets the scale, and a LayerNorm the
mean), so compare log-probs, not residuals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import LensError

if TYPE_CHECKING:
    from ..lens import Lens

#: how far below a row's lowest finite target log-prob a ``-inf`` one is put for the start
CLAMP_NATS = 50.0


@dataclass
class Inversion:
    """The result of :func:`invert`: ``residual`` ``[*batch d_model]`` (in the model's dtype, before the
    final norm), ``kl`` ``[*batch]`` = KL(target || lens(residual)) in nats, ``start_kl`` the same at the
    least-squares start, and the L-BFGS iterations run."""

    residual: Float[Tensor, "*batch d_model"]
    kl: Float[Tensor, "*batch"]
    start_kl: Float[Tensor, "*batch"]
    iterations: int


def _forward_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


@torch.no_grad()
def affine_map(lens: "Lens", layer: int, dtype: torch.dtype = torch.float64
               ) -> tuple[Float[Tensor, "d_model d_model"], Float[Tensor, " d_model"]]:
    """``(M, b)`` with ``lens.transform(h, layer) = h @ M + b`` (read by calling the lens on the basis)."""
    d = lens.d_model
    device = lens.unembed.device
    probe = torch.cat([torch.zeros(1, d), torch.eye(d)]).to(device=device, dtype=dtype)
    out = lens.transform(probe, layer)
    return out[1:] - out[:1], out[0]


@torch.no_grad()
def least_squares_start(lens: "Lens", target: Float[Tensor, "n d_vocab"], layer: int) -> Float[Tensor, "n d_model"]:
    """The least-squares start of :func:`invert` for rows of target log-probs (fp64)."""
    module = lens.unembed.unembed
    w_u = module.W_U.detach().double()                                     # [d_model d_vocab]
    b_u = getattr(module, "b_U", None)
    z = target.double()
    finite = torch.isfinite(z)
    lowest = torch.where(finite, z, torch.full_like(z, torch.inf)).min(-1, keepdim=True).values
    z = torch.where(finite, z, lowest - CLAMP_NATS)  # real targets are exact: a clamp would spoil the solution
    if b_u is not None:
        z = z - b_u.detach().double()
    design = torch.cat([w_u, torch.ones(1, w_u.shape[1], dtype=w_u.dtype, device=w_u.device)])  # [d_model+1 d_vocab]
    x = _solve_rows(design, z)[:, :-1]                                      # normalised residual
    m, b = affine_map(lens, layer)
    return (x - b) @ torch.linalg.pinv(m)


def _solve_rows(design: Float[Tensor, "k v"], z: Float[Tensor, "n v"]) -> Float[Tensor, "n k"]:
    """``argmin_x ||x design - z||`` per row: the normal equations ``x (D D^T) = z D^T`` by Cholesky (fp64;
    ~40x faster than ``pinv`` of a ``[577, 49152]`` design), the pseudo-inverse when ``D D^T`` is singular
    (fewer vocabulary entries than rows of ``D``)."""
    gram = design @ design.T
    chol, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        return z @ torch.linalg.pinv(design)
    return torch.cholesky_solve(design @ z.T, chol).T


def invert(lens: "Lens", target_log_probs: Float[Tensor, "*batch d_vocab"], layer: int, *,
           max_iter: int = 100, tolerance: float = 1e-9) -> Inversion:
    """A residual at lens layer ``layer`` whose lens log-probs match ``target_log_probs`` (log-probs
    in nats, or logits: rows are normalised first); see the module docstring. ``max_iter``: L-BFGS
    iterations (0 returns the least-squares start); ``tolerance``: stop when the loss changes less."""
    if not isinstance(target_log_probs, Tensor) or target_log_probs.ndim == 0 or target_log_probs.shape[-1] != lens.d_vocab:
        raise LensError(f"target log-probs must have shape [..., d_vocab={lens.d_vocab}]: pass log-probs over the vocabulary")
    if int(max_iter) < 0:
        raise LensError(f"max_iter must be >= 0, got {max_iter}")
    layer = lens.layer_index(layer)
    batch_shape = target_log_probs.shape[:-1]
    target = target_log_probs.detach().reshape(-1, lens.d_vocab).to(lens.unembed.device)
    target = target.to(torch.promote_types(target.dtype, torch.float32)).log_softmax(-1)
    if not torch.isfinite(target.max(-1).values).all():
        raise LensError("the target log-probs contain NaN or rows with no finite entry: pass finite log-probs")
    work = torch.promote_types(lens.unembed.dtype, torch.float32)
    h = least_squares_start(lens, target, layer).to(work).requires_grad_(True)

    def per_row() -> Tensor:
        return _forward_kl(target, lens.log_probs(h, layer).to(target.dtype))

    with torch.no_grad():
        start_kl = per_row()
    iterations = 0
    if max_iter:
        optimizer = torch.optim.LBFGS([h], max_iter=int(max_iter), tolerance_grad=1e-12, tolerance_change=tolerance,
                                      history_size=20, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            with torch.enable_grad():
                loss = per_row().sum()
                (h.grad,) = torch.autograd.grad(loss, h)
            return loss.detach()

        optimizer.step(closure)
        iterations = int(optimizer.state[h].get("n_iter", 0))
    with torch.no_grad():
        kl = per_row()
    residual = h.detach().to(lens.unembed.dtype)
    return Inversion(residual.reshape(*batch_shape, lens.d_model), kl.reshape(batch_shape),
                     start_kl.reshape(batch_shape), iterations)
