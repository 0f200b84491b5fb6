"""Token interventions through any lens: lens vectors, steering, token ablation and concept swaps.

These are the interventions of TransformerLens's ``JacobianLens`` (4.3; ``lens_vectors``,
``steering_hooks``, ``ablation_hooks``, ``swap_hooks``; Gurnee et al. 2026), defined for every lens
of ours. A lens decodes lens layer ``i`` as ``W_U norm(M_i h + b_i)``, with the *linear part* ``M_i``
of its translator: ``I + A_i`` for a tuned lens, ``I`` for the logit lens, ``J`` for an imported
J-lens (:meth:`~tl_tunedlens.lens.TunedLens.from_jacobian_lens`). The lens vector of token ``t`` is

    ``v_t = M_iᵀ W_U[:, t]``   (``[d_model]``, residual coordinates at lens layer ``i``)

exactly TL's ``J[l]ᵀ W_U[:, t]`` with ``J`` replaced by ``M``: ``W_U`` as the model holds it (on a raw
Bridge the final norm's scale is not in it; ``fold_ln`` folds it in), no bias and no norm. So a J-lens
imported into ours gives TL's vectors. Every hook works in fp32 on the residual at the lens site
(``[batch pos d_model]``) and returns it in its own dtype; with ``positions`` only those change:

- steering: ``h <- h + alpha * median||h|| * v_t / ||v_t||``; the median is over the per-position L2
  norms of the activation at that hook call, every batch row and selected position together (torch's
  ``median``: the lower middle value of an even count);
- token ablation: ``h <- h - Q Qᵀ h``, ``Q`` an orthonormal basis of the span of the tokens' lens
  vectors (its rank read from the singular values with TL's threshold), so ``h`` ends with zero
  projection on each of them (TL 3.9 removed the unit vectors one after another, which leaves some
  projection when they are not orthogonal; 4.3 projects like this);
- swap: with ``V = [v_s, v_t]`` and coordinates ``c = V⁺ h``, ``h <- h + alpha * V (c' - c)``, ``c'``
  the exchanged live coordinates or, with ``clamp_to``, the exchanged coordinates of a clean run.

Layers are *lens* layers (a J-lens's layer ``l``, ``blocks.{l}.hook_out``, is lens layer ``l + 1``) or
the hook names they read (``"blocks.4.hook_out"`` is lens layer 5); lens layer 0 (the embeddings) and
``n_layers`` (the final residual, ``M = I``) work too, which TL's J-lens cannot do. ``lens`` is any lens of
ours (:class:`~tl_tunedlens.lens.Lens`: its hook routes and ``transform``
are used); the methods ``lens.steering_hooks(...)`` etc. call these functions.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from numbers import Integral
from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import LensError, first_line
from .backend import Model
from .hooks import HookList, Positions, as_positions, replacing_hooks, select_positions
from .layers import normalize_layers
from .saes import find_site

if TYPE_CHECKING:
    from ..lens import Lens

Token = str | int
Tokens = Token | Sequence[Token] | Tensor
SWAP_WARN_COSINE, SWAP_ERROR_COSINE = 0.99, 0.999   # TL's near-parallel policy for a swap pair


@torch.no_grad()
def affine_parts(lens: "Lens", layer: int | str) -> tuple[Float[Tensor, "d_model d_model"], Float[Tensor, " d_model"]]:
    """``(M, b)`` with ``lens.transform(h, layer) == M h + b`` (fp64, on the lens's device), read from
    probes: ``b`` is the transform of zero and column ``j`` of ``M`` that of ``e_j`` minus ``b``, each
    computed by the lens's own arithmetic (so ``M = I + A`` of a tuned lens up to its float rounding)."""
    eye = torch.eye(lens.d_model, dtype=torch.float64, device=lens.unembed.device)
    bias = lens.transform(torch.zeros_like(eye[0]), layer).double()
    return (lens.transform(eye, layer).double() - bias).T, bias


def token_ids(tokens: Tokens, model: Model | None, d_vocab: int) -> list[int]:
    """Vocabulary ids of ``tokens``: one or several single-token strings (needs ``model``'s tokenizer)
    or integer ids; a one-line error for anything else, an unknown or multi-token string, or an id
    outside ``0..d_vocab-1``."""
    if isinstance(tokens, Tensor):
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool or tokens.ndim > 1:
            raise LensError(f"token ids must be integers of shape [n], got {tokens.dtype} {tuple(tokens.shape)}")
        tokens = tokens.reshape(-1).tolist()
    elif not isinstance(tokens, (list, tuple)):
        tokens = [tokens]
    ids = [_token_id(token, model) for token in tokens]
    if not ids:
        raise LensError("no tokens given: pass a token string, an id, or a list of them")
    bad = [i for i in ids if not 0 <= i < d_vocab]
    if bad:
        raise LensError(f"token id {bad[0]} is outside the vocabulary: use ids 0..{d_vocab - 1}")
    return ids


def _token_id(token: Any, model: Model | None) -> int:
    if isinstance(token, str):
        if model is None or getattr(model, "tokenizer", None) is None:
            raise LensError(f"token {token!r} is a string but no model with a tokenizer is known: pass model= or ids")
        try:
            return int(model.to_single_token(token))
        except Exception as err:  # TransformerLens asserts a single token
            raise LensError(f"{token!r} is not a single token of this model ({first_line(err, 80)}): "
                            "pass a string that tokenizes to one token, or its id") from None
    if isinstance(token, bool) or not isinstance(token, Integral):
        raise LensError(f"a token must be a single-token string or an integer id, got {type(token).__name__}")
    return int(token)


def _model_of(lens: "Lens", model: Model | None) -> Model | None:
    return model if model is not None else lens.unembed.model


@torch.no_grad()
def lens_vectors(lens: "Lens", model: Model | None, tokens: Tokens, layer: int | str) -> Float[Tensor, "n d_model"]:
    """Lens vectors ``M_layerᵀ W_U[:, t]`` of ``tokens`` at lens ``layer`` (module docstring), one row per
    token, fp32 on the lens's device. ``model``: resolves string tokens (``None``: the lens's own model)."""
    ids = token_ids(tokens, _model_of(lens, model), lens.d_vocab)
    linear, _ = affine_parts(lens, layer)
    columns = lens.unembed.unembed.W_U[:, ids].detach().to(linear)
    return (linear.T @ columns).T.float()


def unit_rows(vectors: Float[Tensor, "n d_model"], layer: int) -> Float[Tensor, "n d_model"]:
    """``vectors`` scaled to unit L2 norm; a one-line error for a zero or non-finite vector."""
    norms = vectors.norm(dim=-1, keepdim=True)
    if not bool(torch.isfinite(norms).all()) or bool((norms <= torch.finfo(vectors.dtype).eps).any()):
        raise LensError(f"a lens vector at layer {layer} is zero or not finite: choose another token or layer")
    return vectors / norms


def span_basis(vectors: Float[Tensor, "n d_model"], layer: int) -> Float[Tensor, "d_model r"]:
    """Orthonormal basis of the span of ``vectors`` (unit-normalised first), its rank ``r`` the number of
    singular values above ``max(shape) * eps(fp32)`` times the largest (TL's ``orthonormal_subspace``)."""
    units = unit_rows(vectors, layer).double().T
    left, singular, _ = torch.linalg.svd(units, full_matrices=False)
    rank = int((singular > singular[0] * max(units.shape) * torch.finfo(torch.float32).eps).sum())
    return left[:, :rank].float()


def _layers(lens: "Lens", layers: int | str | Sequence[int | str]) -> list[int]:
    if layers is None:
        raise LensError("pass the lens layers to intervene at, e.g. layers=[5] (or hook names)")
    return normalize_layers(layers, lens.n_layers)


def steering_hooks(lens: "Lens", model: Model | None, token: Token, layers: int | str | Sequence[int | str], *,
                   alpha: float = 4.0, positions: Positions = None) -> HookList:
    """``fwd_hooks`` adding ``alpha * median||h|| * v̂`` (``v̂``: the unit lens vector of ``token``) to the
    residual at each lens layer of ``layers`` (module docstring); ``alpha=0`` changes nothing. ``model``:
    the model the hooks run in (checked like ``lens.check_model``; ``None``: the lens's own)."""
    if len(token_ids(token, _model_of(lens, model), lens.d_vocab)) != 1:
        raise LensError("steering takes one token: pass a single token string or id")
    units = {i: unit_rows(lens_vectors(lens, model, token, i), i)[0] for i in _layers(lens, layers)}

    def steer(layer: int):
        def replace(h: Tensor) -> Tensor:
            x = h.float()
            if x.numel() == 0:
                return h
            return (x + alpha * x.norm(dim=-1).median() * units[layer].to(x.device)).to(h.dtype)
        return replace

    return replacing_hooks(lens, list(units), steer, positions=positions, model=model)


def token_ablation_hooks(lens: "Lens", model: Model | None, tokens: Tokens,
                         layers: int | str | Sequence[int | str], *, positions: Positions = None) -> HookList:
    """``fwd_hooks`` projecting the span of ``tokens``' lens vectors out of the residual at each lens layer
    of ``layers``: ``h - Q Qᵀ h`` (module docstring), leaving zero projection on every one of them."""
    bases = {i: span_basis(lens_vectors(lens, model, tokens, i), i) for i in _layers(lens, layers)}

    def ablate(layer: int):
        def replace(h: Tensor) -> Tensor:
            x, q = h.float(), bases[layer].to(h.device)
            return (x - (x @ q) @ q.T).to(h.dtype)
        return replace

    return replacing_hooks(lens, list(bases), ablate, positions=positions, model=model)


def swap_hooks(lens: "Lens", model: Model | None, source_token: Token, target_token: Token,
               layers: int | str | Sequence[int | str], *, alpha: float = 1.0, positions: Positions = None,
               clamp_to: Mapping[str, Tensor] | None = None) -> HookList:
    """``fwd_hooks`` exchanging the lens coordinates of two tokens at each lens layer of ``layers``:
    ``h + alpha * V (c' - V⁺ h)`` (module docstring). ``clamp_to``: a clean run's activations (an
    ``ActivationCache`` or a dict, holding each layer's hook name, e.g. from
    ``run_with_cache(tokens, names_filter=lens.hook_names)``): ``c'`` is then its exchanged coordinates,
    fixed now, at the same positions. Nearly parallel lens vectors (cosine >= 0.999) are refused."""
    source, target = token_ids([source_token, target_token], _model_of(lens, model), lens.d_vocab)
    if source == target:
        raise LensError("source_token and target_token are the same token: a swap would change nothing")
    plans = {}
    for layer in _layers(lens, layers):
        vectors = lens_vectors(lens, model, [source, target], layer).double()
        _check_pair(unit_rows(vectors, layer), layer)
        basis, pinv = vectors.T, torch.linalg.pinv(vectors.T)   # [d_model 2], [2 d_model]
        clamped = None if clamp_to is None else _clean_coordinates(lens, clamp_to, layer, positions, pinv)
        plans[layer] = (basis.float(), pinv.float(), clamped)

    def swap(layer: int):
        basis, pinv, clamped = plans[layer]

        def replace(h: Tensor) -> Tensor:
            x = h.float()
            coords = x @ pinv.to(x.device).T
            wanted = coords[..., [1, 0]] if clamped is None else clamped.to(x.device)
            if clamped is not None and (wanted.shape[1] != x.shape[1] or wanted.shape[0] not in (1, x.shape[0])):
                raise LensError(f"clamp_to holds {tuple(wanted.shape[:2])} (batch, positions) at layer {layer} but "
                                f"the run has {tuple(x.shape[:2])}: take it from a run on the same tokens")
            return (x + alpha * ((wanted - coords) @ basis.to(x.device).T)).to(h.dtype)
        return replace

    return replacing_hooks(lens, list(plans), swap, positions=positions, model=model)


def _check_pair(units: Tensor, layer: int) -> None:
    cosine = abs(float(units[0] @ units[1]))
    if not math.isfinite(cosine) or cosine >= SWAP_ERROR_COSINE:
        raise LensError(f"the two tokens' lens vectors at layer {layer} are nearly parallel (|cos| = {cosine:.6f}): "
                        "choose better-separated tokens")
    if cosine >= SWAP_WARN_COSINE:
        warnings.warn(f"the two tokens' lens vectors at layer {layer} are poorly conditioned (|cos| = {cosine:.6f}): "
                      "the swap may be amplified", stacklevel=3)


def _clean_coordinates(lens: "Lens", clamp_to: Mapping[str, Tensor], layer: int, positions: Positions,
                       pinv: Tensor) -> Float[Tensor, "batch pos 2"]:
    site = lens.hook_names[layer]
    name = find_site(site, clamp_to)
    if name is None:
        raise LensError(f"clamp_to has no activation at {site!r}: pass "
                        "model.run_with_cache(tokens, names_filter=lens.hook_names)[1]")
    clean = select_positions(clamp_to[name], as_positions(positions))
    if clean.ndim != 3 or clean.shape[-1] != lens.d_model:
        raise LensError(f"clamp_to[{name!r}] has shape {tuple(clean.shape)}, expected [batch, pos, {lens.d_model}]")
    return (clean.double() @ pinv.to(clean.device).T)[..., [1, 0]].float()
