"""What tl_tunedlens reads from a TransformerLens model, in one place.

Everything else in the package reaches the model through these functions, never through
per-architecture code: the config facts a lens needs (:func:`model_facts`), the modules of the
final decoder (``model.ln_final``, ``model.unembed``, the output soft-cap), running the model with
hooks to capture residual streams (:func:`capture_residuals`), detaching the hooks of a module while
a lens decodes inside a hook (:func:`hooks_silenced`) and turning text into token ids
(:func:`to_tokens`). Today the backend is TransformerLens's ``HookedTransformer`` (and anything with
its interface, e.g. sae-lens's ``HookedSAETransformer``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from ..errors import LensError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


@dataclass(frozen=True)
class ModelFacts:
    """The facts about a model that a lens is built from."""

    n_layers: int
    d_model: int
    d_vocab: int                      # size of the output distribution
    model_name: str | None
    ln_final: nn.Module | None        # None when the model has no final norm
    unembed: nn.Module
    softcap: float | None             # output_logits_soft_cap, when set and positive
    normalization_type: str | None    # "LN", "LNPre", "RMS", "RMSPre" or None
    device: torch.device


def model_facts(model: "HookedTransformer") -> ModelFacts:
    """Read :class:`ModelFacts` from a TransformerLens model; a clear error for anything else."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(model, "unembed"):
        raise LensError(
            f"expected a TransformerLens HookedTransformer, got {type(model).__name__}: "
            "load one with tl_tunedlens.load_model(...) or HookedTransformer.from_pretrained(...)"
        )
    d_vocab_out = getattr(cfg, "d_vocab_out", -1)
    softcap = getattr(cfg, "output_logits_soft_cap", None)
    return ModelFacts(
        n_layers=int(cfg.n_layers),
        d_model=int(cfg.d_model),
        d_vocab=int(d_vocab_out if d_vocab_out and d_vocab_out > 0 else cfg.d_vocab),
        model_name=getattr(cfg, "model_name", None),
        ln_final=getattr(model, "ln_final", None) if cfg.normalization_type is not None else None,
        unembed=model.unembed,
        softcap=float(softcap) if softcap is not None and softcap > 0 else None,
        normalization_type=cfg.normalization_type,
        device=model.unembed.W_U.device,
    )


def linear_unembed_weights(unembed: nn.Module) -> tuple[Float[Tensor, "d_model d_vocab"], Float[Tensor, " d_vocab"]] | None:
    """``(W_U, b_U)`` when ``unembed`` computes exactly ``x @ W_U + b_U`` (TransformerLens's own
    ``Unembed``) with frozen weights, so callers may run that product themselves; else ``None``."""
    from transformer_lens.components import Unembed as TLUnembed

    w_u = getattr(unembed, "W_U", None)
    if type(unembed) is not TLUnembed or w_u is None or w_u.requires_grad:
        return None
    return w_u, unembed.b_U


def embedding_matrix(model: "HookedTransformer") -> Float[Tensor, "d_vocab d_model"] | None:
    """The token embedding ``W_E`` (``None`` when the model has none of that shape)."""
    w_e = getattr(model, "W_E", None)
    return w_e if isinstance(w_e, Tensor) and w_e.ndim == 2 and w_e.shape[-1] == model.cfg.d_model else None


@contextlib.contextmanager
def hooks_silenced(module: nn.Module | None) -> Iterator[None]:
    """Run ``module`` with its HookPoints' hooks detached, so lens decoding inside a
    ``run_with_hooks``/``run_with_cache`` never fires or overwrites ``ln_final.*`` hooks."""
    if module is None:
        yield
        return
    saved = []
    for sub in module.modules():
        if isinstance(sub, HookPoint) and (sub._forward_hooks or sub._backward_hooks):
            saved.append((sub, sub._forward_hooks, sub._backward_hooks))
            sub._forward_hooks, sub._backward_hooks = type(sub._forward_hooks)(), type(sub._backward_hooks)()
    try:
        yield
    finally:
        for sub, fwd, bwd in saved:
            sub._forward_hooks, sub._backward_hooks = fwd, bwd


@torch.no_grad()
def capture_residuals(model: "HookedTransformer", tokens: Int[Tensor, "batch pos"], hook_names: list[str]
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


def flatten_tokens(resids: Float[Tensor, "layer batch pos d_model"]) -> Float[Tensor, "layer token d_model"]:
    """Residuals of every position as one token axis (batch-major), as the trainer and evaluation read them."""
    return rearrange(resids, "layer batch pos d_model -> layer (batch pos) d_model")


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


def to_tokens(model: "HookedTransformer", text: str | Tensor, *, min_tokens: int = 1) -> Int[Tensor, "batch pos"]:
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
