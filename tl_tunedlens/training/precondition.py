"""Whitened KL steps: each translator's gradient preconditioned by its input's second moment.

A translator is affine, ``y = W x + b`` (``W = I + A``), so the gradient of the loss w.r.t. ``[W b]``
is ``sum_t g_t [x_t; 1]^T`` and the curvature of any loss of ``y`` factors (K-FAC) into an output
part and the input part ``M = E[[x; 1][x; 1]^T]``. The residual stream is very anisotropic (``M``'s
eigenvalues span many decades), so plain gradient steps crawl along its small directions while
Adam's per-coordinate scaling cannot see its rotations. The whitened step moves ``[A b]`` by
``-lr [dA db] (M + lambda I)^{-1}``: the input-side Newton step, with ``lambda = damping * trace(M) / (d + 1)``.
The bias gets the step its own curvature calls for (it is the ``1`` row of ``[x; 1]``).

``M`` comes for free from the least-squares start (:class:`~tl_tunedlens.training.lstsq.RidgeStats`,
the sums it has already accumulated); :class:`Whitener` keeps one ``(d+1) x (d+1)`` inverse per trained
layer (``d`` when the lens has no bias) and is saved in checkpoints with :meth:`Whitener.state_dict`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import LensError
from .lstsq import RidgeStats

if TYPE_CHECKING:
    from ..lens import TunedLens

#: relative damping of the input second moment (``lambda = DAMPING * trace(M) / (d + 1)``)
DAMPING = 1e-3


def input_moments(stats: RidgeStats, bias: bool = True) -> Float[Tensor, "layer k k"]:
    """Per layer of ``stats``, ``E[[x; 1][x; 1]^T]`` (``k = d_model + 1``; ``E[x x^T]``, ``k = d_model``,
    with ``bias=False``), fp64 on the CPU, from the shifted sums (``x = x' + shift``)."""
    if stats.n < 1:
        raise LensError("whitened steps need the input statistics of a least-squares sample: use --init lstsq")
    n = stats.n
    sx, sxx = stats.sx.cpu(), stats.sxx.cpu()
    shift = stats.shift_x.cpu().double()
    outer = torch.einsum("li,lj->lij", sx, shift)
    xx = sxx + outer + outer.transpose(1, 2) + n * torch.einsum("li,lj->lij", shift, shift)
    if not bias:
        return xx / n
    k, d = xx.shape[0], stats.d_model
    moments = torch.empty(k, d + 1, d + 1, dtype=torch.float64)
    moments[:, :d, :d] = xx
    moments[:, :d, d] = moments[:, d, :d] = sx + n * shift
    moments[:, d, d] = n
    return moments / n


class Whitener:
    """The inverse damped input second moment of each trained layer; :meth:`~tl_tunedlens.training.precondition.Whitener.apply_` whitens the gradients."""

    def __init__(self, layers: list[int], inverses: Float[Tensor, "layer k k"]):
        self.layers = list(layers)
        self.inverses = inverses

    @classmethod
    def from_stats(cls, stats: RidgeStats, bias: bool = True, damping: float = DAMPING) -> "Whitener":
        """From the least-squares start's sums (``bias``: whether the translators have one)."""
        moments = input_moments(stats, bias)
        k = moments.shape[-1]
        lam = damping * moments.diagonal(dim1=1, dim2=2).sum(-1) / k
        eye = torch.eye(k, dtype=torch.float64)
        inverses = torch.cholesky_inverse(torch.linalg.cholesky(moments + lam[:, None, None] * eye))
        return cls(stats.layers, inverses.float())

    @torch.no_grad()
    def apply_(self, lens: "TunedLens") -> None:
        """Replace each trained translator's ``.grad`` ``[dA db]`` by ``[dA db] (M + lambda I)^{-1}``."""
        for layer, inverse in zip(self.layers, self.inverses):
            translator = lens.translators[layer]
            w, b = translator.weight, translator.bias
            inverse = inverse.to(w.grad.device)
            if b is None:
                w.grad.copy_(w.grad @ inverse)
                continue
            grad = torch.cat([w.grad, b.grad[:, None]], 1) @ inverse     # [d_out, d_in + 1]
            w.grad.copy_(grad[:, :-1])
            b.grad.copy_(grad[:, -1])

    def state_dict(self) -> dict:
        """The layers and their inverse second moments, for a checkpoint."""
        return {"layers": self.layers, "inverses": self.inverses}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Whitener":
        """The whitener a checkpoint saved (:meth:`state_dict`), for a resume."""
        return cls(state["layers"], state["inverses"])
