"""What tl_tunedlens reads from a TransformerLens model, in one place, for both kinds of model.

TransformerLens has two kinds of model and this is the one module that tells them apart
(:func:`backend_of`); everything else in the package reaches a model through these functions:

- ``"hooked"``: ``HookedTransformer`` (TransformerLens 3.x, also sae-lens's ``HookedSAETransformer``):
  TransformerLens's own modules, ``unembed`` computes ``x @ W_U + b_U``, ``stop_at_layer`` works;
- ``"bridge"``: ``TransformerBridge`` (TransformerLens 3.9 and 4.x, the only kind in 4.x): a Hugging
  Face model wrapped with hook points. Its ``unembed`` wraps an ``nn.Linear`` stored
  ``[d_vocab, d_model]`` (``W_U`` is a transposed view), the output soft-cap is applied by the Hugging
  Face model after it (``cfg.output_logits_soft_cap``), ``blocks.{i}.hook_resid_pre/post`` are aliases
  of ``blocks.{i}.hook_in/out`` (inside a hook ``hook.name`` is the canonical name), and after
  ``enable_compatibility_mode()`` ``cfg.normalization_type`` still says ``LN``/``RMS`` although the
  final norm was folded into ``W_U``.

What is read: the config facts a lens needs (:func:`model_facts`, including whether the final norm
still has a scale), whether the unembedding is a plain frozen linear map that training may run itself
(:func:`linear_unembed_weights`), the unembedding's parameters under backend-independent names for the
model-identity hash (:func:`unembed_state`), the token embedding (:func:`embedding_matrix`), running
the model with hooks to capture residual streams (:func:`capture_residuals`), detaching the hooks of
a module while a lens decodes inside a hook (:func:`hooks_silenced`; at a site wrapped by an sae-lens
SAE the capture reads through it, :mod:`.saes`) and text to tokens
(:func:`to_tokens`). The lens hook names (``blocks.0.hook_resid_pre``, ``blocks.{i}.hook_resid_post``,
:mod:`.layers`) are valid on both kinds.

Importing this module imports only what both TransformerLens lines have (``hook_points``); the model
classes are looked up when a model is inspected, so the package imports on 3.x and 4.x alike.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Any, Container, Iterator, Protocol

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from ..errors import LensError
from .saes import check_sae_read, find_site, missing_site

HOOKED, BRIDGE = "hooked", "bridge"
BACKENDS = (HOOKED, BRIDGE)

class Model(Protocol):
    """A TransformerLens model of either kind, ``HookedTransformer`` (3.x) or ``TransformerBridge`` (3.9, 4.x),
    sae-lens's subclasses included: the part of their common interface this package uses. (A protocol, not
    a union: neither class can be imported on both TransformerLens lines.)"""

    cfg: Any
    hook_dict: dict[str, HookPoint]
    tokenizer: Any
    unembed: nn.Module

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any:
        """A forward pass with ``fwd_hooks`` (TransformerLens's)."""

    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any:
        """A forward pass returning ``(logits, ActivationCache)`` (TransformerLens's)."""

    def hooks(self, *args: Any, **kwargs: Any) -> Any:
        """A context manager holding hooks (TransformerLens's)."""

    def to_tokens(self, *args: Any, **kwargs: Any) -> Tensor:
        """Text to token ids ``[batch pos]`` (TransformerLens's)."""

    def to_str_tokens(self, *args: Any, **kwargs: Any) -> Any:
        """Text or ids to token strings (TransformerLens's)."""


@dataclass(frozen=True)
class ModelFacts:
    """The facts about a model that a lens is built from."""

    backend: str                      # "hooked" or "bridge"
    n_layers: int
    d_model: int
    d_vocab: int                      # size of the output distribution
    model_name: str | None
    ln_final: nn.Module | None        # None when the model has no final norm
    unembed: nn.Module
    softcap: float | None             # output_logits_soft_cap, when set and positive
    normalization_type: str | None    # "LN", "LNPre", "RMS", "RMSPre" or None ("...Pre": the final norm has no scale)
    device: torch.device


def hooked_transformer_class() -> type | None:
    """TransformerLens's ``HookedTransformer`` class, or ``None`` on the 4.x line (where it is gone)."""
    try:
        from transformer_lens import HookedTransformer
    except ImportError:
        return None
    return HookedTransformer


def _bridge_class() -> type | None:
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:  # pragma: no cover - TransformerLens before 3.x
        return None
    return TransformerBridge


def backend_of(model: Model) -> str:
    """``"bridge"`` for a ``TransformerBridge``, ``"hooked"`` for a ``HookedTransformer`` (or anything with
    its interface: ``cfg`` and ``unembed.W_U``); a one-line error for anything else."""
    bridge = _bridge_class()
    if bridge is not None and isinstance(model, bridge):
        return BRIDGE
    if getattr(model, "cfg", None) is not None and getattr(getattr(model, "unembed", None), "W_U", None) is not None:
        return HOOKED
    raise LensError(
        f"expected a TransformerLens HookedTransformer or TransformerBridge, got {type(model).__name__}: load one "
        "with tl_tunedlens.load_model(...), HookedTransformer.from_pretrained(...) or TransformerBridge.boot_transformers(...)"
    )


def model_facts(model: Model) -> ModelFacts:
    """Read :class:`ModelFacts` from a TransformerLens model of either kind; a clear error for anything else."""
    backend = backend_of(model)
    cfg = model.cfg
    d_vocab_out = getattr(cfg, "d_vocab_out", -1)
    softcap = getattr(cfg, "output_logits_soft_cap", None)
    norm_type = getattr(cfg, "normalization_type", None)
    ln_final = getattr(model, "ln_final", None) if norm_type is not None else None
    if backend == BRIDGE and ln_final is not None and norm_type in ("LN", "RMS") and not _has_scale(ln_final, norm_type):
        norm_type += "Pre"  # folded by compatibility mode: say so the way HookedTransformer does
    return ModelFacts(
        backend=backend,
        n_layers=int(cfg.n_layers),
        d_model=int(cfg.d_model),
        d_vocab=int(d_vocab_out if d_vocab_out and d_vocab_out > 0 else cfg.d_vocab),
        model_name=getattr(cfg, "model_name", None),
        ln_final=ln_final,
        unembed=model.unembed,
        softcap=float(softcap) if softcap is not None and softcap > 0 else None,
        normalization_type=norm_type,
        device=model.unembed.W_U.device,
    )


@torch.no_grad()
def _has_scale(norm: nn.Module, norm_type: str) -> bool:
    """Whether ``norm`` does more than normalise (a scale or shift other than the identity), read from
    what it computes on probe vectors, so any parametrisation (e.g. Gemma's ``1 + w``) is covered."""
    weight = next(iter(norm.parameters()), None)
    if weight is None or weight.ndim != 1:
        return False
    x = torch.randn(4, weight.shape[0], generator=torch.Generator().manual_seed(0)).to(weight)
    with hooks_silenced(norm):
        y = norm(x).float()
    x = x.float()
    if norm_type == "LN":
        x = x - x.mean(-1, keepdim=True)
    plain = x * x.pow(2).mean(-1, keepdim=True).add(1e-5).rsqrt()
    return not torch.allclose(y, plain, atol=1e-4 if weight.dtype in (torch.float32, torch.float64) else 5e-2)


def linear_unembed_weights(unembed: nn.Module) -> tuple[Float[Tensor, "d_model d_vocab"], Float[Tensor, " d_vocab"]] | None:
    """``(W_U, b_U)`` when ``unembed`` computes exactly ``x @ W_U + b_U`` with frozen weights, so callers
    may run that product themselves; else ``None`` (then the module must be called).

    HookedTransformer: TransformerLens's own ``Unembed``. Bridge: the ``UnembeddingBridge`` around a plain
    ``nn.Linear`` with no hooks of its own; ``W_U`` is then the transposed view of its ``[d_vocab, d_model]``
    weight (no copy; ``W_U.T`` is contiguous) and ``b_U`` its bias."""
    try:
        from transformer_lens.components import Unembed as HookedUnembed
    except ImportError:  # TransformerLens 4.x: no HookedTransformer components
        HookedUnembed = None
    if HookedUnembed is not None and type(unembed) is HookedUnembed:
        w_u, b_u = unembed.W_U, unembed.b_U
    else:
        linear = _bridge_linear(unembed)
        if linear is None:
            return None
        w_u, b_u = linear.weight.T, linear.bias
    if w_u.requires_grad or b_u is None or b_u.requires_grad:
        return None
    return w_u, b_u


def _bridge_linear(unembed: nn.Module) -> nn.Linear | None:
    """The ``nn.Linear`` a Bridge's unembedding calls, when its forward is exactly that call."""
    try:
        from transformer_lens.model_bridge.generalized_components import UnembeddingBridge
    except ImportError:  # pragma: no cover - TransformerLens before 3.x
        return None
    if not isinstance(unembed, UnembeddingBridge) or type(unembed).forward is not UnembeddingBridge.forward:
        return None
    linear = unembed.original_component
    if type(linear) is not nn.Linear or linear._forward_hooks or linear._forward_pre_hooks or hasattr(linear, "_hf_hook"):
        return None
    return linear


def unembed_state(ln_final: nn.Module | None, unembed: nn.Module) -> dict[str, Tensor]:
    """The unembedding's parameters (with ln_final) under HookedTransformer's names (``ln_final.w``/``.b``, ``unembed.W_U``
    ``[d_model d_vocab]``, ``unembed.b_U``), whatever the backend: equal weights give equal hashes."""
    state = {f"ln_final.{k}": v for k, v in ln_final.state_dict().items()} if ln_final is not None else {}
    state |= {f"unembed.{k}": v for k, v in unembed.state_dict().items()}
    renames = {"_original_component.weight": "w", "_original_component.bias": "b"}
    out = {}
    for key, tensor in state.items():
        module, _, name = key.partition(".")
        if name in renames:  # a Bridge: the wrapped Hugging Face module's parameters
            name = renames[name]
            if module == "unembed":
                name, tensor = ("W_U", tensor.T) if name == "w" else ("b_U", tensor)
        out[f"{module}.{name}"] = tensor
    return out


def embedding_matrix(model: Model) -> Float[Tensor, "d_vocab d_model"] | None:
    """The token embedding ``W_E`` (``None`` when the model has none of that shape)."""
    try:
        w_e = model.W_E
    except (AttributeError, RuntimeError):  # a Bridge whose embedding is not a plain table
        return None
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


def hook_points(model: Model) -> Container[HookPoint]:
    """Every ``HookPoint`` of ``model`` (its ``hook_dict``), held weakly: what a lens hook checks its
    hook point against (see :mod:`tl_tunedlens.core.hooks`)."""
    return weakref.WeakSet(model.hook_dict.values())


class _Captured(Exception):
    """Raised by the last capturing hook: the rest of the forward pass is not needed."""


@torch.no_grad()
def capture_residuals(model: Model, tokens: Int[Tensor, "batch pos"], hook_names: list[str], *,
                      sae_read: str = "output") -> Float[Tensor, "layer batch pos d_model"]:
    """Residual streams read by ``hook_names`` (e.g. ``lens.hook_names``), stacked in that order.

    The model runs frozen, without gradients, and stops as soon as every hook has fired (the hook
    that completes the set raises), so its own ``ln_final`` / unembedding never run on either backend
    (a Bridge ignores ``stop_at_layer=n_layers``). Captures are keyed by the requested name (on a Bridge
    ``hook.name`` is the canonical one). At a site wrapped by an sae-lens SAE the capture reads its
    ``hook_sae_output`` (``sae_read="output"``, what flows downstream) or ``hook_sae_input`` (``"input"``).
    A model split over devices: every capture is moved to the unembedding's device, where the lens lives."""
    check_sae_read(sae_read)
    wanted = list(dict.fromkeys(hook_names))
    available = model.hook_dict
    found = {name: find_site(name, available, sae_read) for name in wanted}
    unknown = [name for name in wanted if found[name] is None]
    if unknown:
        raise missing_site(unknown[0], available, sae_read, fix="pass hook names of this model (e.g. lens.hook_names)",
                           where="the model")
    store: dict[str, Tensor] = {}

    def saver(name: str):
        def save(resid: Tensor, hook) -> None:
            store[name] = resid.detach()
            if len(store) == len(wanted):
                raise _Captured
        return save

    try:
        model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=[(found[name], saver(name)) for name in wanted])
    except _Captured:
        pass
    missing = [name for name in wanted if name not in store]
    if missing:
        raise LensError(f"the hook {missing[0]!r} never fired: pass hook names of this model (e.g. lens.hook_names)")
    device = model.unembed.W_U.device
    return torch.stack([store[name].to(device) for name in hook_names])


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


def to_tokens(model: Model, text: str | Tensor, *, min_tokens: int = 1, max_tokens: int | None = None,
              truncate: bool = False) -> Int[Tensor, "batch pos"]:
    """Token ids on the model's device: a string goes through ``model.to_tokens`` (TransformerLens's
    own BOS convention, ``cfg.default_prepend_bos``; the embedded SmolLM2 prepends none on either
    backend), ids ``[pos]``/``[batch pos]`` pass through.

    Never cut silently: more tokens than the model's context ``n_ctx`` (or ``max_tokens``, if lower)
    is a one-line error, unless ``truncate``, which keeps the *last* tokens (and a prepended BOS), so
    the last position is still the text's own end; :func:`truncation` says how many were dropped."""
    return fit_tokens(model, text, min_tokens=min_tokens, max_tokens=max_tokens, truncate=truncate)[0]


def truncation(kept: int, dropped: int) -> str:
    """One sentence for the user about a truncated text (empty when nothing was dropped)."""
    if not dropped:
        return ""
    return f"--truncate kept the last {kept} of {kept + dropped} tokens (the first {dropped} were dropped)"


def fit_tokens(model: Model, text: str | Tensor, *, min_tokens: int = 1, max_tokens: int | None = None,
               truncate: bool = False) -> tuple[Int[Tensor, "batch pos"], int]:
    """:func:`to_tokens`, and how many tokens ``truncate`` dropped (0 when none)."""
    bos = None
    if isinstance(text, str):
        if not text:
            raise LensError("the text is empty: pass some words")
        if getattr(model, "tokenizer", None) is None:
            raise LensError("this model has no tokenizer: pass token ids instead of a string")
        tokens = model.to_tokens(text, truncate=False)
        bos = getattr(model.tokenizer, "bos_token_id", None) if getattr(model.cfg, "default_prepend_bos", False) else None
    else:
        tokens = as_token_batch(text)
    if tokens.shape[-1] < min_tokens:
        raise LensError(f"the text must be at least {min_tokens} token(s) long: pass a longer text")
    n_ctx = int(model.cfg.n_ctx)
    limit = min(n_ctx, max_tokens) if max_tokens is not None else n_ctx
    if tokens.shape[-1] > limit:
        if not truncate:
            why = f"the model's context n_ctx={n_ctx}" if limit == n_ctx else f"the limit of {limit}"
            raise LensError(f"the text is {tokens.shape[-1]} tokens long, more than {why}: shorten it, or ask for "
                            f"truncation (--truncate, truncate=True) to keep its last {limit} tokens")
        keep_bos = int(bos is not None and bool((tokens[:, 0] == bos).all()) and limit > 1)
        dropped = tokens.shape[-1] - limit
        tokens = torch.cat([tokens[:, :keep_bos], tokens[:, tokens.shape[-1] - (limit - keep_bos):]], dim=-1)
        return tokens.to(model.cfg.device), dropped
    return tokens.to(model.cfg.device), 0
