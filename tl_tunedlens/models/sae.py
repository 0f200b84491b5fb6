"""sae-lens's model classes, without the hub: :func:`as_sae_transformer`.

sae-lens (the optional extra ``[sae]``, TransformerLens 3.x only) attaches SAEs to a
``HookedSAETransformer`` or, for a ``TransformerBridge``, an ``SAETransformerBridge``; its own
``from_pretrained``/``boot_transformers`` download the model. ``as_sae_transformer(model)`` turns a
model already loaded (the embedded SmolLM2 included) into the matching class, and
``load_model(..., sae_transformer=True)`` does it on loading.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

from ..core.backend import BRIDGE, Model, backend_of
from ..errors import ModelLoadError


def sae_lens_analysis() -> Any:
    """The ``sae_lens.analysis`` module (``HookedSAETransformer``, ``SAETransformerBridge``); a one-line
    error saying what to install when sae-lens is missing."""
    try:
        import sae_lens.analysis
    except ImportError as err:
        raise ModelLoadError(f"sae-lens is not installed ({err.name or 'sae_lens'} missing): "
                             "pip install 'tl-tunedlens[sae]' (it needs transformer-lens<4)") from None
    return sae_lens.analysis


def as_sae_transformer(model: Model) -> Model:
    """``model`` as an sae-lens model that SAEs attach to (``add_sae``, ``saes``, ``run_with_cache_with_saes``).

    A ``HookedTransformer`` gives a new ``HookedSAETransformer`` of the same config and tokenizer that
    *shares* its weights (no copy; the same processed weights, so the logits are bit for bit the
    same). A ``TransformerBridge`` is turned into an ``SAETransformerBridge`` in place (sae-lens's own
    ``boot_transformers`` converts a booted Bridge the same way; beta in sae-lens) and returned.
    A model that is one already is returned as it is."""
    analysis = sae_lens_analysis()
    if backend_of(model) == BRIDGE:
        cls = getattr(analysis, "SAETransformerBridge", None)
        if cls is None:  # pragma: no cover - sae-lens without Bridge support
            raise ModelLoadError("this sae-lens has no SAETransformerBridge: load the model with backend='hooked'")
        if not isinstance(model, cls):
            model.__class__ = cls
            model._acts_to_saes = {}
            model._transcoder_output_hooks = {}
        return model
    cls = analysis.HookedSAETransformer
    if isinstance(model, cls):
        return model
    cfg = copy.copy(model.cfg)
    cfg.init_weights = False  # every weight comes from `model` below
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sae_model = cls(cfg, tokenizer=model.tokenizer)
    sae_model.load_state_dict(model.state_dict(), assign=True)
    grads = {name: param.requires_grad for name, param in model.named_parameters()}
    for name, param in sae_model.named_parameters():
        param.requires_grad_(grads[name])
    return sae_model.train(model.training)
