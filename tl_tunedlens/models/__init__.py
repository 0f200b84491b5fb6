"""Loading models: the embedded offline SmolLM2-135M (:mod:`.embedded`), or any official TransformerLens name.

``load_model("smollm2-135m")`` needs no network. Any other name goes through
``HookedTransformer.from_pretrained`` and needs the hub; with the hub unreachable (or
``HF_HUB_OFFLINE=1`` and the model not cached) it fails at once with a clear message.

May import: :mod:`tl_tunedlens.artifacts` (files, hub access) and :mod:`tl_tunedlens.errors`.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch

from ..artifacts.hub import hub_offline, hub_reachable
from ..errors import ModelLoadError, first_line
from .embedded import SMOLLM2_ALIASES, load_smollm2

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["load_model"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch dtype from itself or its name (``"float32"``, ``"torch.bfloat16"``...)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    parsed = DTYPES.get(str(dtype).removeprefix("torch."))
    if parsed is None:
        raise ModelLoadError(f"dtype must be a torch dtype or one of {', '.join(DTYPES)}, got {dtype!r}")
    return parsed


def load_model(
    name: str = "smollm2-135m",
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    n_ctx: int | None = None,
    **kwargs: Any,
) -> "HookedTransformer":
    """A ``HookedTransformer`` with its tokenizer, frozen (``requires_grad=False``) and in eval mode.

    ``name``: ``"smollm2-135m"`` (embedded, offline) or an official TransformerLens model name.
    The processing flags default to TransformerLens's own (``fold_ln``, ``center_writing_weights``,
    ``center_unembed``); lens log-probs are the same under all of them. Extra keyword arguments go
    to ``HookedTransformerConfig`` (embedded model) or ``HookedTransformer.from_pretrained``."""
    dtype = parse_dtype(dtype)
    flags = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed)
    if name.lower() in SMOLLM2_ALIASES:
        model = load_smollm2(dtype=dtype, device=device, n_ctx=n_ctx, **flags, **kwargs)
    else:
        model = _load_from_hub(name, dtype=dtype, device=device, n_ctx=n_ctx, **flags, **kwargs)
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def in_hub_cache(repo_id: str) -> bool:
    """Whether the Hugging Face cache holds ``repo_id``'s ``config.json`` (no network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _not_cached(official: str) -> ModelLoadError:
    return ModelLoadError(f"cannot load {official!r} with HF_HUB_OFFLINE=1: it is not in the local Hugging Face "
                          "cache (unset HF_HUB_OFFLINE with the internet on to download it)")


def _load_from_hub(name: str, *, dtype, device, n_ctx, **kwargs) -> "HookedTransformer":
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        official = get_official_model_name(name)
    except ValueError:
        raise ModelLoadError(
            f"unknown model {name!r}: use 'smollm2-135m' (offline) or an official TransformerLens name "
            "such as 'gpt2' (see transformer_lens.loading.OFFICIAL_MODEL_NAMES)"
        ) from None
    if not hub_offline() and not hub_reachable():
        raise ModelLoadError(
            f"cannot load {official!r}: the Hugging Face hub is unreachable; connect to the internet, set "
            "HF_HUB_OFFLINE=1 to use a cached copy, or use the offline model 'smollm2-135m'"
        )
    if hub_offline() and not in_hub_cache(official):
        raise _not_cached(official)
    if n_ctx is not None:
        kwargs["n_ctx"] = n_ctx
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return HookedTransformer.from_pretrained(official, dtype=dtype, device=device, **kwargs).eval()
    except (OSError, ValueError) as err:
        if hub_offline():
            raise _not_cached(official) from err
        raise ModelLoadError(f"cannot load {official!r}: {first_line(err)}") from err
