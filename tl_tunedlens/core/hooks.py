"""TransformerLens integration: cache readers and ``fwd_hooks`` for ``run_with_hooks``, as functions of a
lens (``lens`` first); :class:`tl_tunedlens.lens.Lens` offers each as a method of the same name.

Three routes give identical results on the same input:

- direct:  ``lens(resid, layer)``;
- cache:   ``_, cache = model.run_with_cache(tokens, names_filter=lens.hook_names)`` then
  ``lens.logits_from_cache(cache)`` / ``lens.log_probs_from_cache(cache)``;
- hooks:   ``record = LensRecord()``; ``model.run_with_hooks(tokens, fwd_hooks=lens.hooks(record))``;
  then ``record.log_probs[layer]`` (or ``record.top_k_log_probs`` / ``record.top_k_indices``).

``lens.hooks(intervene=layer)`` instead replaces the residual stream at ``layer`` with its
translated version, so the rest of the model runs on the translator's output, and
``lens.hooks(ablate=layer, subspace=U, method="mean"|"resample"|"zero")`` removes the span of ``U``
from the residual stream there (:mod:`.ablation`).

**The right model.** The cache route checks the cache's model (``cache.model``). The hook route
checks, at every call, that the hook point it runs on belongs to the model the lens was built or
loaded for (a weak reference kept by its :class:`~tl_tunedlens.core.unembed.Unembed`), or to the
``model=`` passed to ``lens.hooks``, which is then checked like ``lens.check_model(model)`` (the same
weights in another instance or backend pass, another model raises). Hooks running in any other model
raise a one-line :class:`~tl_tunedlens.errors.LensError` at their first call. A hook function called by
hand (``hook`` not a TransformerLens ``HookPoint``) is not checked.

Both routes read through sae-lens SAEs (:mod:`.saes`): where an SAE is attached at a lens site, they
read its ``hook_sae_output`` (what flows downstream) or, with ``sae_read="input"``, its
``hook_sae_input`` (the clean residual); interventions replace ``hook_sae_output``. That is why hooks
are placed with name predicates (:class:`~tl_tunedlens.core.saes.SiteFilter`) and why a cache for a
lens is best taken with ``names_filter=lens.names_filter``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from transformer_lens.hook_points import HookPoint

from ..errors import LensError
from .ablation import ablate as ablate_subspace
from .ablation import check_method, check_subspace
from .backend import Model, hook_points
from .layers import as_index, normalize_layers
from .saes import SAE_READS, SiteFilter, check_sae_read, find_site, missing_site
from .unembed import to_log_probs

if TYPE_CHECKING:
    from transformer_lens import ActivationCache

    from ..lens import Lens


HookList = list[tuple[Callable[[str], bool], Callable]]
Positions = int | slice | list[int] | Int[Tensor, " n"] | None


@dataclass
class LensRecord:
    """Lens predictions captured during a forward pass, keyed by lens layer.

    ``log_probs[layer]``: ``[batch pos d_vocab]`` log-probs (nats), when ``top_k`` is None;
    ``top_k_log_probs[layer]`` / ``top_k_indices[layer]``: ``[batch pos k]`` otherwise.
    ``pos`` is the selected positions (``positions``) or all of them."""

    log_probs: dict[int, Tensor] = field(default_factory=dict)
    top_k_log_probs: dict[int, Tensor] = field(default_factory=dict)
    top_k_indices: dict[int, Tensor] = field(default_factory=dict)
    positions: Tensor | None = None

    @property
    def layers(self) -> list[int]:
        """The lens layers recorded so far, ascending."""
        return sorted(self.log_probs or self.top_k_log_probs)

    def clear(self) -> None:
        """Forget everything recorded, to reuse the record for another forward pass."""
        self.log_probs.clear()
        self.top_k_log_probs.clear()
        self.top_k_indices.clear()

    def stack(self) -> Float[Tensor, "layer batch pos d_vocab"] | Float[Tensor, "layer batch pos k"]:
        """Recorded layers stacked in order (log-probs, or top-k log-probs when top-k was used)."""
        source = self.log_probs or self.top_k_log_probs
        if not source:
            raise LensError("this LensRecord is empty: pass it to lens.hooks(record) and run the model first")
        return torch.stack([source[i] for i in sorted(source)])


def as_positions(positions: Positions) -> slice | Int[Tensor, " n"] | None:
    """``positions`` checked and normalised: ``None`` (all), a slice of ints, or a 1-D ``long`` tensor
    (from an int, a list/tuple of ints or an integer tensor); anything else is a one-line error."""
    if positions is None:
        return None
    if isinstance(positions, slice):
        for part in (positions.start, positions.stop, positions.step):
            if part is not None:
                as_index(part, "a positions slice bound")
        return positions
    if isinstance(positions, Tensor):
        if positions.dtype == torch.bool or positions.is_floating_point() or positions.is_complex() or positions.ndim > 1:
            raise LensError(f"positions must be an integer tensor of shape [n], got {positions.dtype} of shape "
                            f"{tuple(positions.shape)}: pass e.g. positions=[-1]")
        return positions.long().reshape(-1).cpu()
    if isinstance(positions, (list, tuple)):
        return torch.tensor([as_index(p, "position") for p in positions], dtype=torch.long)
    return torch.tensor([as_index(positions, "positions")], dtype=torch.long)


def check_positions(positions: slice | Tensor | None, n_pos: int) -> None:
    """Raise a one-line error if an index of ``positions`` (see :func:`~tl_tunedlens.core.hooks.as_positions`) is outside a sequence of ``n_pos`` tokens."""
    if isinstance(positions, Tensor) and len(positions):
        bad = positions[(positions >= n_pos) | (positions < -n_pos)]
        if len(bad):
            raise LensError(f"position {int(bad[0])} is out of range for a sequence of {n_pos} tokens: "
                            f"use 0..{n_pos - 1} (or -{n_pos}..-1 from the end)")


def select_positions(resid: Tensor, positions: slice | Tensor | None) -> Tensor:
    """``resid[:, positions]`` for ``positions`` from :func:`~tl_tunedlens.core.hooks.as_positions` (checked against the sequence length), or all of it for ``None``."""
    if positions is None:
        return resid
    check_positions(positions, resid.shape[1])
    return resid[:, positions]


def replacing_hooks(lens: "Lens", layers: int | str | list, make: Callable[[int], Callable[[Tensor], Tensor]],
                    *, positions: Positions = None, model: Model | None = None) -> HookList:
    """``fwd_hooks`` that replace the residual stream at each lens layer of ``layers`` by ``make(layer)(resid)``
    (``[batch pos d_model]`` in and out; with ``positions``, applied to those positions only, the others kept).
    Each hook checks its hook point with ``lens``'s guard (``model``: see :func:`recording_hooks`)."""
    positions = as_positions(positions)
    guard = hook_guard(lens, model)

    def make_hook(replace: Callable[[Tensor], Tensor]) -> Callable:
        def hook_fn(resid: Tensor, hook) -> Tensor:
            guard(hook)
            if positions is None:
                return replace(resid)
            check_positions(positions, resid.shape[1])
            out = resid.clone()
            out[:, positions] = replace(resid[:, positions])
            return out
        return hook_fn

    return [(SiteFilter([lens.hook_names[i]]), make_hook(make(i))) for i in normalize_layers(layers, lens.n_layers)]


def hook_guard(lens: "Lens", model: Model | None) -> Callable[[object], None]:
    """A check that a hook point belongs to ``model`` (checked now with ``check_model``) or, without
    it, to the model this lens was built or loaded for; see the module doc."""
    if model is not None:
        lens.check_model(model)
    owner = model if model is not None else lens.unembed.model
    points = None

    def check(hook: object) -> None:
        nonlocal points
        if not isinstance(hook, HookPoint):
            return
        if points is None:
            points = hook_points(owner) if owner is not None else ()
        if hook not in points:
            raise LensError(
                f"lens hooks ran on {getattr(hook, 'name', None) or 'a hook point'} of a model other than the one "
                f"this {type(lens).__name__} was built for: pass lens.hooks(..., model=that_model) to check and "
                "use it there, or TunedLens.load the lens for that model")
    return check

# --- ActivationCache route ------------------------------------------------------
def names_filter(lens: "Lens") -> SiteFilter:
    """A hook-name predicate for ``run_with_cache(tokens, names_filter=lens.names_filter)`` (or
    ``run_with_cache_with_saes``): it caches the lens sites and, at a site wrapped by an sae-lens SAE,
    both its ``hook_sae_output`` and ``hook_sae_input``. Without SAEs it caches exactly what
    ``names_filter=lens.hook_names`` does."""
    return SiteFilter(lens.hook_names, SAE_READS)

def residuals_from_cache(lens: "Lens", cache: "ActivationCache", *, sae_read: str = "output"
                         ) -> Float[Tensor, "layer batch pos d_model"]:
    """Residual stream at every lens layer, stacked, from a TransformerLens cache. At a site wrapped by
    an sae-lens SAE: its ``hook_sae_output`` (``sae_read="output"``) or ``hook_sae_input`` (``"input"``)."""
    check_sae_read(sae_read)
    names = [find_site(name, cache, sae_read) for name in lens.hook_names]
    if None in names:
        site = lens.hook_names[names.index(None)]
        raise missing_site(site, cache, sae_read, fix="run model.run_with_cache(tokens, names_filter=lens.names_filter)",
                           where="the cache")
    model = getattr(cache, "model", None)
    if model is not None and hasattr(model, "unembed"):
        lens.check_model(model)
    return torch.stack([cache[name] for name in names])

def logits_from_cache(lens: "Lens", cache: "ActivationCache", *, sae_read: str = "output"
                      ) -> Float[Tensor, "layer batch pos d_vocab"]:
    """Lens logits of every layer ``0..n_layers``; the last row is the model's own output
    (``sae_read``: see :func:`residuals_from_cache`)."""
    return lens.forward_all(lens.residuals_from_cache(cache, sae_read=sae_read))

def log_probs_from_cache(lens: "Lens", cache: "ActivationCache", *, sae_read: str = "output"
                         ) -> Float[Tensor, "layer batch pos d_vocab"]:
    """Like :func:`logits_from_cache`, as log-probs (nats), fp32 or better."""
    return to_log_probs(lens.logits_from_cache(cache, sae_read=sae_read))

# --- hooks route ----------------------------------------------------------------
def recording_hooks(
    lens: "Lens",
    record: LensRecord,
    *,
    layers: int | list[int] | None = None,
    positions: Positions = None,
    top_k: int | None = None,
    detach: bool = True,
    model: Model | None = None,
    sae_read: str = "output",
) -> HookList:
    """Hooks that write lens predictions into ``record`` during a normal forward pass.

    ``layers``: lens layers (or their hook names) to record (default all); ``positions``: an index,
    slice or list of positions (default all); ``top_k``: keep only the ``k`` most likely tokens per
    position (memory ``layers x pos x k`` instead of ``layers x pos x vocab``); ``detach``: record
    without building a graph; ``model``: the model the hooks will run in, when it is not the one the
    lens was built for (checked); ``sae_read``: at a site wrapped by an sae-lens SAE, read its
    ``"output"`` (default) or its ``"input"``. The model's own output is not changed."""
    check_sae_read(sae_read)
    if not isinstance(record, LensRecord):
        raise LensError(f"record must be a LensRecord, got {type(record).__name__}: pass LensRecord()")
    if top_k is not None and not 1 <= as_index(top_k, "top_k") <= lens.d_vocab:
        raise LensError(f"top_k={top_k} is out of range: use 1..{lens.d_vocab} or None")
    positions = as_positions(positions)
    record.positions = positions if isinstance(positions, Tensor) else None
    guard = hook_guard(lens, model)

    def make_hook(layer: int) -> Callable:
        def hook_fn(resid: Tensor, hook) -> None:
            guard(hook)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
                log_probs = lens.log_probs(select_positions(resid, positions), layer)
                if top_k is None:
                    record.log_probs[layer] = log_probs
                else:
                    values, indices = log_probs.topk(int(top_k), dim=-1)
                    record.top_k_log_probs[layer] = values
                    record.top_k_indices[layer] = indices
        return hook_fn

    return [(SiteFilter([lens.hook_names[i]], [sae_read]), make_hook(i)) for i in normalize_layers(layers, lens.n_layers)]

def intervention_hooks(
    lens: "Lens",
    layers: int | list[int],
    *,
    positions: Positions = None,
    model: Model | None = None,
) -> HookList:
    """Hooks that replace the residual stream at ``layers`` with ``lens.transform(resid, layer)``
    (at ``positions`` only, if given), so the rest of the model runs on the translator's output
    (at a site wrapped by an sae-lens SAE: its ``hook_sae_output``, what flows downstream).
    ``model``: as in :func:`recording_hooks`."""
    return replacing_hooks(lens, layers, lambda layer: lambda resid: lens.transform(resid, layer),
                           positions=positions, model=model)

def ablation_hooks(
    lens: "Lens",
    layers: int | list[int],
    subspace: Float[Tensor, "d_model k"],
    *jacobian_lens_form: object,
    method: str = "mean",
    mean: Float[Tensor, " d_model"] | None = None,
    seed: int = 0,
    positions: object = None,
) -> HookList:
    """Hooks that remove the span of ``subspace`` (orthonormal columns) from the residual stream at
    ``layers`` by ``method`` (``"mean"``, ``"resample"`` or ``"zero"``; ``mean``: the mean residual to
    use, default the batch's; ``seed``: the resample derangement's). See :mod:`.ablation`.

    TransformerLens's ``JacobianLens.ablation_hooks(model, tokens, layers, positions=...)`` is
    :meth:`~tl_tunedlens.lens.Lens.token_ablation_hooks` here; called in that form (a model first,
    three positional arguments or ``positions``) this raises a one-line error saying so."""
    if jacobian_lens_form or positions is not None or hasattr(layers, "cfg"):
        raise LensError("lens.ablation_hooks(layers, subspace) removes a given subspace; to remove tokens' lens "
                        "vectors like JacobianLens.ablation_hooks(model, tokens, layers), call "
                        "lens.token_ablation_hooks(model, tokens, layers)")
    basis = check_subspace(subspace, lens.d_model)
    check_method(method)

    def hook_fn(resid: Tensor, hook) -> Tensor:
        return ablate_subspace(resid, basis, method, mean=mean, seed=seed)

    return [(SiteFilter([lens.hook_names[i]]), hook_fn) for i in normalize_layers(layers, lens.n_layers)]

def hooks(
    lens: "Lens",
    record: LensRecord | None = None,
    *,
    layers: int | list[int] | None = None,
    positions: Positions = None,
    top_k: int | None = None,
    intervene: int | list[int] | None = None,
    detach: bool = True,
    model: Model | None = None,
    ablate: int | list[int] | None = None,
    subspace: Float[Tensor, "d_model k"] | None = None,
    method: str = "mean",
    mean: Float[Tensor, " d_model"] | None = None,
    seed: int = 0,
    sae_read: str = "output",
) -> HookList:
    """``fwd_hooks`` for ``model.run_with_hooks``: record into ``record``, intervene and/or ablate.

    Ablation hooks (``ablate=layer, subspace=U, method=, mean=, seed=``, :func:`ablation_hooks`)
    come first, so the record sees the ablated stream; then recording hooks, so at an intervened
    layer the record holds the lens prediction of the residual before the translator replaced it
    (see :func:`recording_hooks`, :func:`intervention_hooks`). ``model``: the model the hooks will
    run in when it is not the one this lens was built or loaded for (checked now, like
    ``lens.check_model(model)``)."""
    if record is None and intervene is None and ablate is None:
        raise LensError("lens.hooks() needs a LensRecord to record into, intervene=LAYER and/or ablate=LAYER")
    if (ablate is None) != (subspace is None):
        raise LensError("ablation needs both ablate=LAYER and subspace=U (a [d_model, k] orthonormal basis)")
    hooks: HookList = []
    if ablate is not None:
        hooks += lens.ablation_hooks(ablate, subspace, method=method, mean=mean, seed=seed)
    if record is not None:
        hooks += lens.recording_hooks(record, layers=layers, positions=positions, top_k=top_k, detach=detach,
                                      model=model, sae_read=sae_read)
    if intervene is not None:
        hooks += lens.intervention_hooks(intervene, positions=positions, model=model)
    return hooks
