"""sae-lens's model classes, without the hub: :func:`~tl_tunedlens.models.sae.as_sae_transformer`.

sae-lens (the optional extra ``[sae]``, TransformerLens 3.x only) attaches SAEs to a
``HookedSAETransformer`` or, for a ``TransformerBridge``, an ``SAETransformerBridge``; its own
``from_pretrained``/``boot_transformers`` download the model. ``as_sae_transformer(model)`` turns a
model already loaded (the embedded SmolLM2 included) into the matching class, and
``load_model(..., sae_transformer=True)`` does it on loading. :func:`load_sae` reads an SAE folder
written by sae-lens (what ``tl-tunedlens show --sae`` takes).
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..core.backend import BRIDGE, Model, backend_of
from ..errors import ModelLoadError, first_line


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


def load_sae(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Any:
    """An sae-lens SAE from a folder sae-lens wrote (``sae.save_model(folder)``: ``cfg.json`` +
    ``sae_weights.safetensors``), through ``SAE.load_from_disk``; a one-line error when it cannot."""
    sae_lens_analysis()
    from sae_lens import SAE

    folder = Path(path).expanduser()
    if not (folder / "cfg.json").is_file():
        raise ModelLoadError(f"no SAE in {str(path)!r} (no cfg.json): pass a folder written by sae-lens, "
                             "e.g. sae.save_model(folder)")
    try:
        return SAE.load_from_disk(str(folder), device=str(device))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise ModelLoadError(f"cannot load the SAE in {str(path)!r}: {first_line(err)}") from err
