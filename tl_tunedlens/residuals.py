"""Capturing the residual stream at every lens layer with TransformerLens hooks (no gradients)."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


@torch.no_grad()
def capture_residuals(model, tokens: Int[Tensor, "batch pos"], hook_names: list[str]
                      ) -> Float[Tensor, "layer batch pos d_model"]:
    """Residual streams read by ``hook_names`` (e.g. ``lens.hook_names``), stacked in that order.

    The model runs frozen, without gradients, and stops after its last block: its own
    ``ln_final`` / unembedding are skipped (a lens decodes the last residual itself)."""
    store: dict[str, Tensor] = {}

    def save(resid: Tensor, hook) -> None:
        store[hook.name] = resid.detach()

    model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=[(name, save) for name in set(hook_names)],
                         stop_at_layer=model.cfg.n_layers)
    return torch.stack([store[name] for name in hook_names])
