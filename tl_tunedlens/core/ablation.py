"""Removing a subspace of the residual stream: zero, mean and resample ablation.

For an orthonormal basis ``U`` (``[d_model k]``, columns orthonormal) of the subspace, a residual
``h`` keeps its component outside the subspace and gets a replacement inside it:

- ``"zero"``:     ``h - U Uᵀ h``                       (the component is removed);
- ``"mean"``:     ``h - U Uᵀ (h - mu)``                (replaced by the mean residual's, ``mu``);
- ``"resample"``: ``h - U Uᵀ h + U Uᵀ h_other``         (replaced by another position's, a seeded derangement
  of the positions of the batch, so no position keeps its own).

``mu`` is given (e.g. the mean over a sample) or the mean over the batch and positions being ablated.
:func:`ablate` is used by ``lens.hooks(ablate=layer, subspace=U, method=...)`` (inside
``run_with_hooks``) and by :mod:`tl_tunedlens.analysis.causal` on cached residuals, so both routes
compute the same thing.
"""

from __future__ import annotations

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from ..errors import LensError

METHODS = ("mean", "resample", "zero")


def check_subspace(subspace: Tensor, d_model: int, atol: float = 1e-4) -> Float[Tensor, "d_model k"]:
    """``subspace`` as a ``[d_model k]`` basis with orthonormal columns (a ``[d_model]`` vector is one
    column); a one-line error otherwise."""
    if not isinstance(subspace, Tensor) or subspace.ndim not in (1, 2) or subspace.shape[0] != d_model:
        shape = tuple(subspace.shape) if isinstance(subspace, Tensor) else type(subspace).__name__
        raise LensError(f"subspace must be a [d_model={d_model}, k] tensor of orthonormal columns, got {shape}")
    basis = subspace.detach().reshape(d_model, -1)
    gram = basis.double().T @ basis.double()
    if not torch.allclose(gram, torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device), atol=atol):
        raise LensError("the subspace's columns are not orthonormal: orthonormalise them first "
                        "(e.g. torch.linalg.qr(U).Q)")
    return basis


def check_method(method: str) -> str:
    """``method`` if it is one of ``METHODS``; a one-line error otherwise."""
    if method not in METHODS:
        raise LensError(f"unknown ablation method {method!r}: use one of {', '.join(METHODS)}")
    return method


def derangement(n: int, seed: int = 0, device: torch.device | str = "cpu") -> Tensor:
    """A seeded permutation of ``0..n-1`` with no fixed point (the identity for ``n < 2``)."""
    if n < 2:
        return torch.arange(n, device=device)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    source = torch.empty(n, dtype=torch.long)
    source[order] = order.roll(-1)           # each element takes the next one's along a random cycle
    return source.to(device)


def ablate(h: Float[Tensor, "*batch d_model"], subspace: Float[Tensor, "d_model k"], method: str = "mean", *,
           mean: Float[Tensor, " d_model"] | None = None, seed: int = 0) -> Float[Tensor, "*batch d_model"]:
    """``h`` with the span of ``subspace``'s orthonormal columns ablated by ``method`` (module docstring).
    ``mean``: the ``mu`` of mean ablation (default: the mean of ``h`` over every leading dimension);
    ``seed``: the resample derangement's."""
    check_method(method)
    basis = subspace.to(device=h.device, dtype=h.dtype)
    flat = rearrange(h, "... d -> (...) d")
    if method == "zero":
        replacement = torch.zeros_like(flat[:1])
    elif method == "mean":
        replacement = (flat.mean(0) if mean is None else mean.to(device=h.device, dtype=h.dtype))[None]
    else:
        replacement = flat[derangement(len(flat), seed, flat.device)]
    out = flat - (flat - replacement) @ basis @ basis.T
    return out.reshape(h.shape)
