"""TransformerLens integration: cache readers and ``fwd_hooks`` for ``run_with_hooks``.

Three routes give identical results on the same input:

- direct:  ``lens(resid, layer)``;
- cache:   ``_, cache = model.run_with_cache(tokens, names_filter=lens.hook_names)`` then
  ``lens.logits_from_cache(cache)`` / ``lens.log_probs_from_cache(cache)``;
- hooks:   ``record = LensRecord()``; ``model.run_with_hooks(tokens, fwd_hooks=lens.hooks(record))``;
  then ``record.log_probs[layer]`` (or ``record.top_k_log_probs`` / ``record.top_k_indices``).

``lens.hooks(intervene=layer)`` instead replaces the residual stream at ``layer`` with its
translated version, so the rest of the model runs on the translator's output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import LensError
from .layers import normalize_layers
from .unembed import to_log_probs

if TYPE_CHECKING:
    from transformer_lens import ActivationCache

HookList = list[tuple[str, Callable]]


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


def _select_positions(resid: Tensor, positions) -> Tensor:
    return resid if positions is None else resid[:, positions]


class HooksMixin:
    """The TransformerLens routes of a lens: ``ActivationCache`` readers and ``fwd_hooks`` builders.

    A base of :class:`tl_tunedlens.lens.Lens`, and uses only this part of it: the attributes below and
    the methods ``transform(h, layer)``, ``log_probs(h, layer)``, ``forward_all(resids)`` and
    ``check_model(model)``."""

    n_layers: int
    d_vocab: int
    hook_names: list[str]

    # --- ActivationCache route ------------------------------------------------------
    def residuals_from_cache(self, cache: "ActivationCache") -> Float[Tensor, "layer batch pos d_model"]:
        """Residual stream at every lens layer, stacked, from a TransformerLens cache."""
        missing = [name for name in self.hook_names if name not in cache]
        if missing:
            raise LensError(
                f"the cache lacks {len(missing)} lens hook(s), e.g. {missing[0]!r}: run "
                "model.run_with_cache(tokens, names_filter=lens.hook_names)"
            )
        model = getattr(cache, "model", None)
        if model is not None and hasattr(model, "unembed"):
            self.check_model(model)
        return torch.stack([cache[name] for name in self.hook_names])

    def logits_from_cache(self, cache: "ActivationCache") -> Float[Tensor, "layer batch pos d_vocab"]:
        """Lens logits of every layer ``0..n_layers``; the last row is the model's own output."""
        return self.forward_all(self.residuals_from_cache(cache))

    def log_probs_from_cache(self, cache: "ActivationCache") -> Float[Tensor, "layer batch pos d_vocab"]:
        """Like :meth:`logits_from_cache`, as log-probs (nats), fp32 or better."""
        return to_log_probs(self.logits_from_cache(cache))

    # --- hooks route ----------------------------------------------------------------
    def recording_hooks(
        self,
        record: LensRecord,
        *,
        layers: int | list[int] | None = None,
        positions: int | slice | list[int] | Int[Tensor, " n"] | None = None,
        top_k: int | None = None,
        detach: bool = True,
    ) -> HookList:
        """Hooks that write lens predictions into ``record`` during a normal forward pass.

        ``layers``: lens layers to record (default all); ``positions``: an index, slice or list of
        positions (default all); ``top_k``: keep only the ``k`` most likely tokens per position
        (memory ``layers x pos x k`` instead of ``layers x pos x vocab``); ``detach``: record
        without building a graph. The model's own output is not changed."""
        if not isinstance(record, LensRecord):
            raise LensError(f"record must be a LensRecord, got {type(record).__name__}: pass LensRecord()")
        if top_k is not None and not 1 <= int(top_k) <= self.d_vocab:
            raise LensError(f"top_k={top_k} is out of range: use 1..{self.d_vocab} or None")
        if isinstance(positions, int):
            positions = [positions]
        if isinstance(positions, list):
            positions = torch.tensor(positions, dtype=torch.long)
        record.positions = positions if isinstance(positions, Tensor) else None

        def make_hook(layer: int) -> Callable:
            def hook_fn(resid: Tensor, hook) -> None:
                with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
                    log_probs = self.log_probs(_select_positions(resid, positions), layer)
                    if top_k is None:
                        record.log_probs[layer] = log_probs
                    else:
                        values, indices = log_probs.topk(int(top_k), dim=-1)
                        record.top_k_log_probs[layer] = values
                        record.top_k_indices[layer] = indices
            return hook_fn

        return [(self.hook_names[i], make_hook(i)) for i in normalize_layers(layers, self.n_layers)]

    def intervention_hooks(
        self,
        layers: int | list[int],
        *,
        positions: int | slice | list[int] | Int[Tensor, " n"] | None = None,
    ) -> HookList:
        """Hooks that replace the residual stream at ``layers`` with ``lens.transform(resid, layer)``
        (at ``positions`` only, if given), so the rest of the model runs on the translator's output."""
        if isinstance(positions, int):
            positions = [positions]

        def make_hook(layer: int) -> Callable:
            def hook_fn(resid: Tensor, hook) -> Tensor:
                if positions is None:
                    return self.transform(resid, layer)
                out = resid.clone()
                out[:, positions] = self.transform(resid[:, positions], layer)
                return out
            return hook_fn

        return [(self.hook_names[i], make_hook(i)) for i in normalize_layers(layers, self.n_layers)]

    def hooks(
        self,
        record: LensRecord | None = None,
        *,
        layers: int | list[int] | None = None,
        positions: int | slice | list[int] | Int[Tensor, " n"] | None = None,
        top_k: int | None = None,
        intervene: int | list[int] | None = None,
        detach: bool = True,
    ) -> HookList:
        """``fwd_hooks`` for ``model.run_with_hooks``: record into ``record`` and/or intervene.

        Recording hooks come first, so at an intervened layer the record holds the lens
        prediction of the residual as the model computed it (see :meth:`recording_hooks`,
        :meth:`intervention_hooks`)."""
        if record is None and intervene is None:
            raise LensError("lens.hooks() needs a LensRecord to record into and/or intervene=LAYER")
        hooks: HookList = []
        if record is not None:
            hooks += self.recording_hooks(record, layers=layers, positions=positions, top_k=top_k, detach=detach)
        if intervene is not None:
            hooks += self.intervention_hooks(intervene, positions=positions)
        return hooks
