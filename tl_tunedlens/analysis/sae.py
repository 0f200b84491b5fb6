"""Lenses and SAEs together: what splicing an sae-lens SAE, or editing one of its latents, does to every layer.

Two standard experiments, each returning tensors ``[layer batch pos]`` over lens layers ``0..n_layers``:

- :func:`splice_effect`: the lens's KL to the *clean* model's output at every layer, without the SAE,
  with it spliced in (its reconstruction flows downstream), and with sae-lens's error term on (the
  reconstruction error is added back, so nothing changes);
- :func:`ablate_latent` / :func:`steer_latent`: with the SAE spliced in and its error term on (so only
  the edit changes anything), set one latent to zero or add to it, and compare each layer's lens
  prediction with the unedited one (KL and top-1 changes), summarised where the latent fires.

The model is sae-lens's ``HookedSAETransformer`` or ``SAETransformerBridge``
(``load_model(..., sae_transformer=True)`` or :func:`~tl_tunedlens.models.sae.as_sae_transformer`); the
SAE sits on a lens site (``blocks.{i}.hook_resid_pre/post``), is attached for each run with
``model.saes`` and removed afterwards. Lens layers before the SAE's site read the same residuals in
every run, so their effects are exactly zero; the site's own layer reads what flows downstream
(``hook_sae_output``). :mod:`tl_tunedlens.viz.sae` draws both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..core.backend import Model, to_tokens
from ..core.saes import sae_hook_names
from ..core.unembed import to_log_probs
from ..errors import LensError
from .stats import kl_divergence

if TYPE_CHECKING:
    from ..lens import Lens

SAE = Any  # an sae-lens SAE (sae_lens.SAE); type hints only, sae-lens is imported by nobody here


@dataclass
class SpliceEffect:
    """Per-layer KL (nats) of the lens to the clean model's output distribution, ``[layer batch pos]``:
    ``clean`` without the SAE, ``spliced`` with the SAE's reconstruction flowing downstream,
    ``error_term`` with sae-lens's error term on (equal to ``clean`` up to rounding).
    ``site_layer`` is the lens layer of the SAE's hook point ``site``."""

    site: str
    site_layer: int
    clean: Float[Tensor, "layer batch pos"]
    spliced: Float[Tensor, "layer batch pos"]
    error_term: Float[Tensor, "layer batch pos"]

    def mean(self) -> dict[str, Float[Tensor, " layer"]]:
        """Each KL averaged over batch and positions: ``{"clean", "spliced", "error_term"}`` -> ``[layer]``, nats."""
        return {name: getattr(self, name).mean(dim=(1, 2)) for name in ("clean", "spliced", "error_term")}


@dataclass
class LatentEffect:
    """What editing latent ``latent`` of the SAE at ``site`` changes, per lens layer.

    ``acts``: the latent's activation in the unedited run ``[batch pos]``; ``kl``: KL(unedited lens
    prediction || edited one) ``[layer batch pos]``, nats; ``top1_changed``: whether the lens's top-1
    token changed ``[layer batch pos]``; ``where``: the positions :meth:`summary` averages over (where
    the latent fires, for an ablation; everywhere, for steering); ``edit``: ``"ablate"`` or ``"steer"``."""

    site: str
    site_layer: int
    latent: int
    edit: str
    acts: Float[Tensor, "batch pos"]
    kl: Float[Tensor, "layer batch pos"]
    top1_changed: Bool[Tensor, "layer batch pos"]
    where: Bool[Tensor, "batch pos"]

    def summary(self) -> dict[str, Float[Tensor, " layer"]]:
        """Per layer, over the positions in ``where``: mean ``"kl"`` (nats) and the fraction ``"top1_changed"``
        (NaN when ``where`` is empty, i.e. the latent never fires)."""
        n = self.where.sum()
        return {"kl": (self.kl * self.where).sum(dim=(1, 2)) / n,
                "top1_changed": (self.top1_changed & self.where).sum(dim=(1, 2)) / n}


def _site_of(lens: "Lens", model: Model, sae: SAE) -> tuple[str, int]:
    """The SAE's hook point and its lens layer, after checking the model can splice it."""
    if not callable(getattr(model, "saes", None)):
        raise LensError(f"a {type(model).__name__} cannot splice SAEs: use sae-lens's model, "
                        "model = as_sae_transformer(model) (or load_model(..., sae_transformer=True))")
    site = str(sae.cfg.metadata.hook_name)
    if site in getattr(model, "acts_to_saes", {}):
        raise LensError(f"an SAE is already attached at {site!r}: call model.reset_saes() first, so the clean run is clean")
    lens.check_model(model)
    d_in = getattr(sae.cfg, "d_in", None)
    if d_in is not None and int(d_in) != int(model.cfg.d_model):
        raise LensError(f"the SAE reads vectors of d_in={int(d_in)} but the model's residual stream has "
                        f"d_model={int(model.cfg.d_model)}: use an SAE trained on this model's {site!r}")
    return site, lens.layer_of(site)


def _lens_run(lens: "Lens", model: Model, tokens: Tensor, hooks: list | None = None
              ) -> tuple[Float[Tensor, "batch pos d_vocab"], Float[Tensor, "layer batch pos d_model"]]:
    """The model's output log-probs and the lens residuals of one run (with extra ``hooks`` in place)."""
    with model.hooks(fwd_hooks=hooks or []):
        logits, cache = model.run_with_cache(tokens, names_filter=lens.names_filter)
    return to_log_probs(logits), lens.residuals_from_cache(cache)


def _layer_kls(lens: "Lens", ref: Float[Tensor, "batch pos d_vocab"], resids: Tensor) -> Float[Tensor, "layer batch pos"]:
    """KL(ref || lens prediction) at every lens layer, nats."""
    return torch.stack([kl_divergence(ref, lens.log_probs(h, i)) for i, h in enumerate(resids)])


@torch.no_grad()
def splice_effect(lens: "Lens", model: Model, sae: SAE, tokens: Tensor | str) -> SpliceEffect:
    """The per-layer effect of splicing ``sae`` into ``model`` (see :class:`SpliceEffect`), from three runs
    on ``tokens`` (ids ``[pos]``/``[batch pos]`` or a string): clean, spliced, spliced with the error term."""
    site, site_layer = _site_of(lens, model, sae)
    tokens = to_tokens(model, tokens)
    ref, resids = _lens_run(lens, model, tokens)
    runs = {}
    for error_term in (False, True):
        with model.saes(saes=[sae], use_error_term=error_term):
            runs[error_term] = _lens_run(lens, model, tokens)[1]
    return SpliceEffect(site, site_layer, clean=_layer_kls(lens, ref, resids),
                        spliced=_layer_kls(lens, ref, runs[False]), error_term=_layer_kls(lens, ref, runs[True]))


@torch.no_grad()
def _latent_effect(lens: "Lens", model: Model, sae: SAE, tokens: Tensor | str, latent: int, edit: str,
                   change: Callable[[Tensor], Tensor]) -> LatentEffect:
    site, site_layer = _site_of(lens, model, sae)
    d_sae = int(sae.cfg.d_sae)
    if isinstance(latent, bool) or not 0 <= int(latent) < d_sae:
        raise LensError(f"latent {latent} is out of range: this SAE has latents 0..{d_sae - 1}")
    latent = int(latent)
    tokens = to_tokens(model, tokens)
    acts_hook = frozenset(sae_hook_names(site, "hook_sae_acts_post")).__contains__
    seen: list[Tensor] = []

    def record(acts: Tensor, hook) -> None:
        seen.append(acts[..., latent].float())

    def edited(acts: Tensor, hook) -> Tensor:
        acts = acts.clone()
        acts[..., latent] = change(acts[..., latent])
        return acts

    with model.saes(saes=[sae], use_error_term=True):
        _, base = _lens_run(lens, model, tokens, [(acts_hook, record)])
        _, new = _lens_run(lens, model, tokens, [(acts_hook, edited)])
    if not seen:
        raise LensError(f"the SAE's latents at {site!r} were never seen: is the SAE on this model's hook point?")
    acts = seen[0]
    base_log_probs = [lens.log_probs(h, i) for i, h in enumerate(base)]
    new_log_probs = [lens.log_probs(h, i) for i, h in enumerate(new)]
    kl = torch.stack([kl_divergence(b, n) for b, n in zip(base_log_probs, new_log_probs)])
    top1 = torch.stack([b.argmax(-1) != n.argmax(-1) for b, n in zip(base_log_probs, new_log_probs)])
    where = acts > 0 if edit == "ablate" else torch.ones_like(acts, dtype=torch.bool)
    return LatentEffect(site, site_layer, latent, edit, acts=acts, kl=kl, top1_changed=top1, where=where)


def ablate_latent(lens: "Lens", model: Model, sae: SAE, tokens: Tensor | str, latent: int) -> LatentEffect:
    """Zero latent ``latent`` of ``sae`` (spliced in with its error term, so nothing else changes) and
    measure each lens layer's change (see :class:`LatentEffect`; summarised where the latent fires)."""
    return _latent_effect(lens, model, sae, tokens, latent, "ablate", torch.zeros_like)


def steer_latent(lens: "Lens", model: Model, sae: SAE, tokens: Tensor | str, latent: int,
                 coefficient: float) -> LatentEffect:
    """Add ``coefficient`` to latent ``latent`` of ``sae`` at every position (for a linear decoder:
    ``coefficient * W_dec[latent]`` added to the residual at the SAE's site; error term on) and measure
    each lens layer's change (see :class:`LatentEffect`; summarised over all positions)."""
    return _latent_effect(lens, model, sae, tokens, latent, "steer", lambda acts: acts + float(coefficient))


def most_active_latent(model: Model, sae: SAE, tokens: Tensor | str) -> int:
    """The latent of ``sae`` with the largest total activation on ``tokens`` (a default to look at)."""
    site = str(sae.cfg.metadata.hook_name)
    tokens = to_tokens(model, tokens)
    totals: list[Tensor] = []
    hook = frozenset(sae_hook_names(site, "hook_sae_acts_post")).__contains__
    with torch.no_grad(), model.saes(saes=[sae], use_error_term=True), \
            model.hooks(fwd_hooks=[(hook, lambda acts, hook: totals.append(acts.float().sum(dim=(0, 1))))]):
        model(tokens)
    if not totals:
        raise LensError(f"the SAE's latents at {site!r} were never seen: is the SAE on this model's hook point?")
    return int(totals[0].argmax())
