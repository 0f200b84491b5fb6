"""One forward pass, every lens: run the model once, keep the residual at each lens site, and decode
any lens at any layer from it on demand. Trajectories (:mod:`.trajectory`) and the explorer
(:mod:`tl_tunedlens.app.explorer`) stream their rows from a :class:`LensRun`, one layer at a time, so
memory holds ``layers x pos x d_model`` residuals, never ``layers x pos x d_vocab`` log-probs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..core.backend import Model, to_tokens
from ..core.unembed import to_log_probs
from ..errors import LensError

if TYPE_CHECKING:
    from ..lens import Lens


@dataclass
class LensRun:
    """The model run once on ``tokens``: its own log-probs ``final`` (nats) and the residual ``resids`` at each
    lens site (``[layer batch pos d_model]``, lens layers ``0..n_layers``)."""

    tokens: Int[Tensor, "batch pos"]
    final: Float[Tensor, "batch pos d_vocab"]
    resids: Float[Tensor, "layer batch pos d_model"]

    @property
    def n_layers(self) -> int:
        """The lens layers decoded from this run are ``0..n_layers`` (the last is the model's output)."""
        return self.resids.shape[0] - 1

    def log_probs(self, lens: "Lens", layer: int) -> Float[Tensor, "batch pos d_vocab"]:
        """Log-probs (nats) of ``lens`` at ``layer``; at ``n_layers``, the model's own."""
        return self.final if layer == self.n_layers else lens.log_probs(self.resids[layer], layer)

    def rows(self, lens: "Lens") -> Callable[[int], Tensor]:
        """``row(layer)``: :meth:`log_probs` of ``lens``, for :meth:`~tl_tunedlens.analysis.trajectory.PredictionTrajectory.from_log_probs`."""
        return lambda layer: self.log_probs(lens, layer)


@torch.no_grad()
def run_once(model: Model, lenses: Sequence["Lens"], tokens: Tensor | str) -> LensRun:
    """Run ``model`` on ``tokens`` (ids ``[pos]``/``[batch pos]`` or a string) once, caching only the lens sites,
    for every lens of ``lenses`` (each checked against the model; they must read the same hook points)."""
    first = lenses[0]
    for lens in lenses:
        lens.check_model(model)
        if lens.hook_names != first.hook_names:
            raise LensError("the lenses read different hook points: use lenses of one model on the same hooks "
                            "(e.g. LogitLens.from_model(model, hook_names=tuned.hook_names))")
    tokens = to_tokens(model, tokens)
    logits, cache = model.run_with_cache(tokens, names_filter=first.names_filter)
    return LensRun(tokens, to_log_probs(logits), first.residuals_from_cache(cache))
