"""Model inputs and the residual stream: text to token ids, and capturing every lens layer's residual
stream with TransformerLens hooks (no gradients)."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .errors import LensError


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


def as_token_batch(tokens: Tensor | None) -> Int[Tensor, "batch pos"] | None:
    """Integer token ids ``[pos]`` or ``[batch pos]`` as ``[batch pos]`` (``None`` passes through)."""
    if tokens is None:
        return None
    if not isinstance(tokens, Tensor) or tokens.is_floating_point() or tokens.is_complex():
        raise LensError("tokens must be an integer tensor of shape [pos] or [batch pos]")
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.ndim != 2:
        raise LensError(f"tokens must have shape [pos] or [batch pos], got {tuple(tokens.shape)}")
    return tokens.long()


def to_tokens(model, text: str | Tensor, *, min_tokens: int = 1) -> Int[Tensor, "batch pos"]:
    """Token ids on the model's device: a string goes through ``model.to_tokens`` (TransformerLens's
    own BOS convention; the embedded SmolLM2 prepends none), ids ``[pos]``/``[batch pos]`` pass through."""
    if isinstance(text, str):
        if not text:
            raise LensError("the text is empty: pass some words")
        if getattr(model, "tokenizer", None) is None:
            raise LensError("this model has no tokenizer: pass token ids instead of a string")
        tokens = model.to_tokens(text)
    else:
        tokens = as_token_batch(text)
    if tokens.shape[-1] < min_tokens:
        raise LensError(f"the text must be at least {min_tokens} token(s) long: pass a longer text")
    return tokens.to(model.cfg.device)
