"""Loading a model as a ``TransformerBridge`` (TransformerLens 3.9 and 4.x).

Sources, all booted through ``TransformerBridge.boot_transformers``:

- the embedded SmolLM2-135M, offline: the ``LlamaForCausalLM`` rebuilt from the converted cache
  (:func:`~.embedded.smollm2_hf_model`, the same GGUF weights the HookedTransformer route loads);
- a local Hugging Face model folder (``config.json`` + weights + tokenizer files), offline;
- an in-memory Hugging Face model (``PreTrainedModel``) with its tokenizer, offline;
- a hub name (any Hugging Face causal LM TransformerLens supports), when the hub is reachable, or from
  the local cache with ``HF_HUB_OFFLINE=1``; otherwise it fails at once with a one-line error.

``compatibility_mode=True`` (the default) calls ``enable_compatibility_mode(fold_ln=...,
center_writing_weights=..., center_unembed=...)``: the weights are processed like HookedTransformer's
defaults (final norm folded into ``W_U``, writing weights and ``W_U`` mean-centred; irreversible, and
done to an in-memory model passed in too), so a lens moves between the two backends.
``compatibility_mode=False`` keeps the raw Hugging Face weights (the residual stream is then
Hugging Face's ``hidden_states``, as in the reference ``tuned-lens``).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import torch

from ..artifacts.hub import hub_offline
from ..errors import ModelLoadError, first_line
from .embedded import SMOLLM2_ALIASES, check_n_ctx, smollm2_hf_model
from .remote import not_cached, require_hub_model


def is_hf_folder(source: Any) -> bool:
    """Whether ``source`` names a local Hugging Face model folder (it holds a ``config.json``)."""
    return isinstance(source, (str, Path)) and (Path(source).expanduser() / "config.json").is_file()


def load_bridge(source: Any, *, dtype: torch.dtype, device: str | torch.device, n_ctx: int | None,
                compatibility_mode: bool, fold_ln: bool, center_writing_weights: bool, center_unembed: bool,
                tokenizer: Any = None, **kwargs: Any):
    """A ``TransformerBridge`` of ``source`` (see the module docstring), in eval mode, compatibility mode
    on unless ``compatibility_mode=False``. ``n_ctx`` may shorten the context (the embedded model: 2048 by
    default). Extra keyword arguments go to ``boot_transformers``."""
    boot = functools.partial(_boot, dtype=dtype, device=device, **kwargs)
    if isinstance(source, str) and source.lower() in SMOLLM2_ALIASES:
        hf_model, tokenizer, cfg = smollm2_hf_model(dtype)
        bridge = boot(cfg["model_name"], hf_model, tokenizer)
        bridge.cfg.model_name = cfg["model_name"]
        bridge.cfg.default_prepend_bos = cfg["default_prepend_bos"]  # as the GGUF tokenizer: no BOS
        n_ctx = check_n_ctx(n_ctx, cfg)
    elif is_hf_folder(source):
        bridge = boot(str(source), *_from_folder(Path(source).expanduser(), dtype, tokenizer))
    elif isinstance(source, torch.nn.Module):
        label = str(getattr(getattr(source, "config", None), "name_or_path", "") or type(source).__name__)
        bridge = boot(label, source, _tokenizer_for(source, tokenizer))
    elif isinstance(source, str):
        require_hub_model(source)
        bridge = boot(source, None, tokenizer)
    else:
        raise ModelLoadError(f"cannot load a {type(source).__name__} as a model: pass a name, a Hugging Face model "
                             "folder or a Hugging Face model (PreTrainedModel)")
    if n_ctx is not None:
        if n_ctx > bridge.cfg.n_ctx:
            raise ModelLoadError(f"n_ctx={n_ctx} exceeds the model's context of {bridge.cfg.n_ctx}: pass n_ctx <= {bridge.cfg.n_ctx}")
        bridge.cfg.n_ctx = int(n_ctx)  # the longest input to_tokens and training accept
    if compatibility_mode:
        flags = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed)
        if (getattr(bridge.cfg, "output_logits_soft_cap", None) or 0) > 0:
            flags["center_unembed"] = False  # TransformerLens turns it off itself (with a warning) under a soft-cap
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bridge.enable_compatibility_mode(disable_warnings=True, **flags)
    return bridge.eval()


def _boot(label: str, hf_model, tokenizer, *, dtype, device, **kwargs):
    from transformer_lens.model_bridge import TransformerBridge

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return TransformerBridge.boot_transformers(label, hf_model=hf_model, tokenizer=tokenizer, dtype=dtype,
                                                       device=str(device), **kwargs)
    except (OSError, ValueError, KeyError, NotImplementedError) as err:
        if hf_model is None and hub_offline():
            raise not_cached(label) from err
        raise ModelLoadError(f"cannot boot {label!r} as a TransformerBridge: {first_line(err)}") from err


def _from_folder(folder: Path, dtype: torch.dtype, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load the Hugging Face model in {folder}: {first_line(err)}") from err
    return hf_model, tokenizer


def _tokenizer_for(hf_model, tokenizer):
    """The tokenizer passed in, else the one saved beside the model's local folder; a clear error otherwise
    (without one, TransformerLens would try the hub)."""
    if tokenizer is not None:
        return tokenizer
    path = getattr(getattr(hf_model, "config", None), "name_or_path", "")
    if path and Path(path).is_dir():
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError):
            pass
    raise ModelLoadError("this Hugging Face model has no local tokenizer to go with it: pass tokenizer=... "
                         "(e.g. AutoTokenizer.from_pretrained(its folder))")
