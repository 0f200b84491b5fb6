"""The Llama weight layout both ways: Hugging Face ``LlamaForCausalLM`` <-> ``HookedTransformer``.

The embedded SmolLM2 is cached once in HookedTransformer's layout (:mod:`.embedded`). Both backends
load from that cache: a ``HookedTransformer`` directly, a ``TransformerBridge`` through the
``LlamaForCausalLM`` rebuilt by :func:`hooked_to_hf`. The mapping is written here, as one table read
in both directions, because the cache must also build on TransformerLens 4.x, which no longer ships
``transformer_lens.pretrained`` (3.x's ``convert_llama_weights``; :func:`hf_to_hooked` gives the same
tensors under the same names, checked by the tests). Pure rearrangements: exact in both directions.
"""

from __future__ import annotations

import contextlib

import torch
from einops import rearrange
from torch import Tensor

from ..errors import ModelLoadError

# per block: (HookedTransformer name, Hugging Face name under model.layers.{i}., einops pattern HF -> hooked,
# the heads axis size: "q" query heads, "kv" key/value heads). "{g}" is "_" with grouped-query attention.
BLOCK = [
    ("ln1.w", "input_layernorm.weight", None, None),
    ("attn.W_Q", "self_attn.q_proj.weight", "(n h) m -> n m h", "q"),
    ("attn.{g}W_K", "self_attn.k_proj.weight", "(n h) m -> n m h", "kv"),
    ("attn.{g}W_V", "self_attn.v_proj.weight", "(n h) m -> n m h", "kv"),
    ("attn.W_O", "self_attn.o_proj.weight", "m (n h) -> n h m", "q"),
    ("ln2.w", "post_attention_layernorm.weight", None, None),
    ("mlp.W_in", "mlp.up_proj.weight", "a b -> b a", None),
    ("mlp.W_gate", "mlp.gate_proj.weight", "a b -> b a", None),
    ("mlp.W_out", "mlp.down_proj.weight", "a b -> b a", None),
]
TOP = [("embed.W_E", "model.embed_tokens.weight", None), ("ln_final.w", "model.norm.weight", None),
       ("unembed.W_U", "lm_head.weight", "a b -> b a")]


def _zero_biases(cfg: dict, gqa: str, n_kv: int) -> dict[str, tuple[int, ...]]:
    """HookedTransformer's bias tensors (Llama has none: they are zeros) and their shapes."""
    shapes = {"unembed.b_U": (cfg["d_vocab"],)}
    for i in range(cfg["n_layers"]):
        shapes |= {f"blocks.{i}.attn.b_Q": (cfg["n_heads"], cfg["d_head"]),
                   f"blocks.{i}.attn.{gqa}b_K": (n_kv, cfg["d_head"]), f"blocks.{i}.attn.{gqa}b_V": (n_kv, cfg["d_head"]),
                   f"blocks.{i}.attn.b_O": (cfg["d_model"],), f"blocks.{i}.mlp.b_in": (cfg["d_mlp"],),
                   f"blocks.{i}.mlp.b_out": (cfg["d_model"],)}
    return shapes


def _table(cfg: dict) -> tuple[list[tuple[str, str, str | None, dict]], dict[str, tuple[int, ...]]]:
    """Every (hooked name, HF name, pattern, axis sizes) of a model with config ``cfg`` (HookedTransformer
    field names: n_layers, n_heads, n_key_value_heads, d_head, d_model, d_mlp, d_vocab), and the zero biases."""
    n_kv = cfg.get("n_key_value_heads")
    gqa = "_" if n_kv is not None else ""
    heads = {"q": cfg["n_heads"], "kv": n_kv or cfg["n_heads"], None: None}
    rows = [(hooked, hf, pattern, {}) for hooked, hf, pattern in TOP]
    for i in range(cfg["n_layers"]):
        rows += [(f"blocks.{i}.{hooked.format(g=gqa)}", f"model.layers.{i}.{hf}", pattern,
                  {"n": heads[axis]} if axis else {}) for hooked, hf, pattern, axis in BLOCK]
    return rows, _zero_biases(cfg, gqa, heads["kv"])


def hf_to_hooked(hf_state: dict[str, Tensor], cfg: dict) -> dict[str, Tensor]:
    """A ``LlamaForCausalLM`` state dict in HookedTransformer's layout (zero biases included; a tied
    ``lm_head`` may be absent: the embedding is used), as 3.x's ``convert_llama_weights`` gives it."""
    rows, biases = _table(cfg)
    state = dict(hf_state)
    state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    out = {hooked: rearrange(state[hf], pattern, **sizes) if pattern else state[hf] for hooked, hf, pattern, sizes in rows}
    dtype = state["model.embed_tokens.weight"].dtype
    return out | {name: torch.zeros(shape, dtype=dtype) for name, shape in biases.items()}


def hooked_to_hf(state: dict[str, Tensor], cfg: dict) -> dict[str, Tensor]:
    """The inverse of :func:`hf_to_hooked`: a ``LlamaForCausalLM`` state dict (``lm_head.weight`` included).
    Refuses a state whose biases are not zero (it would not be a Llama model)."""
    rows, biases = _table(cfg)
    for name in biases:
        if name in state and state[name].any():
            raise ModelLoadError(f"{name} is not zero: this state dict is not a Llama model's (Llama has no biases)")
    return {hf: rearrange(state[hooked], _inverse(pattern), **sizes) if pattern else state[hooked]
            for hooked, hf, pattern, sizes in rows}


def _inverse(pattern: str) -> str:
    left, right = pattern.split(" -> ")
    return f"{right} -> {left}"


def llama_from_hooked(state: dict[str, Tensor], cfg: dict, *, dtype: torch.dtype = torch.float32, tokenizer=None):
    """A frozen ``LlamaForCausalLM`` (eval mode) with the weights of HookedTransformer state ``state``:
    the model the cache was converted from (same tensors; tied embeddings stay tied)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tied = torch.equal(state["unembed.W_U"].T, state["embed.W_E"])
    special = {f"{k}_token_id": getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad")}
    config = LlamaConfig(
        vocab_size=cfg["d_vocab"], hidden_size=cfg["d_model"], intermediate_size=cfg["d_mlp"],
        num_hidden_layers=cfg["n_layers"], num_attention_heads=cfg["n_heads"], head_dim=cfg["d_head"],
        num_key_value_heads=cfg.get("n_key_value_heads") or cfg["n_heads"], hidden_act=cfg["act_fn"],
        rms_norm_eps=cfg["eps"], max_position_embeddings=cfg["n_ctx"], tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": cfg["rotary_base"]}, **special,
    )
    try:  # every parameter is loaded below (strictly), so skip the random initialisation (seconds)
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - other transformers versions
        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    model.load_state_dict({k: v.to(dtype) for k, v in hooked_to_hf(state, cfg).items()})
    return model.requires_grad_(False).eval()
