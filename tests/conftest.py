"""Shared fixtures: tiny random models of both TransformerLens backends (fast unit tests) and the real
SmolLM2 (integration).

A tiny model is one of three kinds, built from config: ``"LN"`` (GPT-2 type: LayerNorm, learned
positions), ``"RMS"`` (Llama type: RMSNorm, rotary, gated MLP) and ``"gemma2"`` (Gemma-2 type: RMSNorm
and an output logit soft-cap), as a ``HookedTransformer`` (``backend="hooked"``, TransformerLens 3.x)
or a ``TransformerBridge`` around the Hugging Face model of that type (``backend="bridge"``). Tests
whose parameters include the Bridge are marked ``bridge``: ``make test`` runs those under
TransformerLens 4.x too, where HookedTransformer tests skip.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)
# one thread per test process when pytest-xdist runs two of them (make test: `pytest -n 2`), and for the
# processes they start (notebook kernels, torchrun ranks, CLI runs): two busy threads per process on 2 cores
# make OpenMP spin-wait on each other, which slows small ops ~30x on a loaded machine
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

BACKENDS = ["hooked", "bridge"]
KINDS = ["LN", "RMS", "gemma2"]
GEMMA2_SOFTCAP = 5.0


def hooked_available() -> bool:
    from tl_tunedlens.core.backend import hooked_transformer_class

    return hooked_transformer_class() is not None


def make_tiny_model(
    normalization_type: str | None = "LN",
    *,
    backend: str = "hooked",
    n_layers: int = 3,
    d_model: int = 16,
    d_vocab: int = 37,
    n_ctx: int = 32,
    seed: int = 0,
    process: bool = False,
    dtype: torch.dtype = torch.float32,
    **cfg_kwargs,
):
    """A random model of kind ``normalization_type`` ("LN", "RMS" or "gemma2", see the module doc) on ``backend``.

    ``process``: apply ``fold_ln`` / ``center_writing_weights`` / ``center_unembed`` like ``from_pretrained``
    does (a Bridge: ``enable_compatibility_mode()``), after randomising the norm weights so folding really
    changes them. ``output_logits_soft_cap=c`` makes an "RMS" model soft-capped (a Gemma-2 type on the
    Bridge). A HookedTransformer has no tokenizer; a Bridge has a word-level one (``t0`` .. ``t{d_vocab-1}``)."""
    if normalization_type == "gemma2":
        normalization_type, cfg_kwargs = "RMS", {"output_logits_soft_cap": GEMMA2_SOFTCAP, **cfg_kwargs}
    if backend == "bridge":
        model = _tiny_bridge(normalization_type, n_layers=n_layers, d_model=d_model, d_vocab=d_vocab, n_ctx=n_ctx,
                             seed=seed, process=process, dtype=dtype, **cfg_kwargs)
    else:
        model = _tiny_hooked(normalization_type, n_layers=n_layers, d_model=d_model, d_vocab=d_vocab, n_ctx=n_ctx,
                             seed=seed, process=process, dtype=dtype, **cfg_kwargs)
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


def _tiny_hooked(normalization_type, *, n_layers, d_model, d_vocab, n_ctx, seed, process, dtype, **cfg_kwargs):
    if not hooked_available():
        pytest.skip("HookedTransformer is gone in this TransformerLens (4.x): Bridge tests only")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    if cfg_kwargs.get("output_logits_soft_cap"):  # Gemma-2 type
        cfg_kwargs = {"attn_scores_soft_cap": 50.0, "use_normalization_before_and_after": True, **cfg_kwargs}
    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, d_head=4, n_heads=d_model // 4, d_mlp=4 * d_model,
        d_vocab=d_vocab, n_ctx=n_ctx, act_fn="gelu", normalization_type=normalization_type,
        positional_embedding_type="rotary" if normalization_type == "RMS" else "standard",
        gated_mlp=normalization_type == "RMS", final_rms=normalization_type == "RMS",
        seed=seed, dtype=dtype, device="cpu", **cfg_kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".w"):  # norm scales: make them non-trivial
                param.copy_(1.0 + 0.3 * torch.randn_like(param))
            elif name.endswith(".b") or name.endswith("b_U"):
                param.copy_(0.1 * torch.randn_like(param))
    if process:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_and_process_state_dict(state, fold_ln=True, center_writing_weights=True, center_unembed=True)
    return model


def tiny_hf_model(normalization_type: str = "LN", *, n_layers: int = 3, d_model: int = 16, d_vocab: int = 37,
                  n_ctx: int = 32, seed: int = 0, output_logits_soft_cap: float | None = None):
    """A random Hugging Face causal LM: GPT-2 ("LN"), Llama ("RMS") or, soft-capped, Gemma-2; norm weights
    randomised like the HookedTransformer's."""
    import transformers as tf

    torch.manual_seed(seed)
    init = dict(initializer_range=0.8 / d_model**0.5)  # HookedTransformer's default scale: non-trivial logits
    heads = dict(num_attention_heads=d_model // 4, num_key_value_heads=d_model // 4, head_dim=4)
    common = dict(vocab_size=d_vocab, hidden_size=d_model, intermediate_size=4 * d_model, num_hidden_layers=n_layers,
                  max_position_embeddings=n_ctx, tie_word_embeddings=False, **heads, **init)
    if normalization_type == "LN":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=d_vocab, n_embd=d_model, n_layer=n_layers, n_head=d_model // 4,
                                                 n_positions=n_ctx, n_inner=4 * d_model, tie_word_embeddings=False, **init))
    elif output_logits_soft_cap:
        model = tf.Gemma2ForCausalLM(tf.Gemma2Config(final_logit_softcapping=output_logits_soft_cap,
                                                     attn_logit_softcapping=50.0, sliding_window=n_ctx, **common))
    else:
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                param.copy_((0.0 if name.endswith("bias") else 1.0) + 0.3 * torch.randn_like(param))
    return model.eval()


def tiny_tokenizer(d_vocab: int = 37):
    """A word-level tokenizer over ``t0 .. t{d_vocab-1}`` (BOS ``t1``, EOS ``t2``), offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(d_vocab)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="t1", eos_token="t2", unk_token="t0",
                                   pad_token="t3", name_or_path="tiny", add_bos_token=True)


def _tiny_bridge(normalization_type, *, n_layers, d_model, d_vocab, n_ctx, seed, process, dtype, **cfg_kwargs):
    from tl_tunedlens import load_model

    softcap = cfg_kwargs.pop("output_logits_soft_cap", None)
    if cfg_kwargs:
        raise TypeError(f"make_tiny_model(backend='bridge') does not take {sorted(cfg_kwargs)}")
    hf_model = tiny_hf_model(normalization_type, n_layers=n_layers, d_model=d_model, d_vocab=d_vocab, n_ctx=n_ctx,
                             seed=seed, output_logits_soft_cap=softcap).to(dtype)
    return load_model(hf_model, backend="bridge", tokenizer=tiny_tokenizer(d_vocab), dtype=dtype,
                      compatibility_mode=process)


def random_tuned_lens(model, scale: float = 0.2, seed: int = 3):
    """A ``TunedLens`` for ``model`` with seeded random (non-zero) translators."""
    from tl_tunedlens import TunedLens

    lens = TunedLens.from_model(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return lens


#: the longest tests (their module names), started first so that two workers finish together
LONGEST_FIRST = ("test_docs", "test_readme", "test_distributed", "test_models", "test_app_browser", "test_examples")


def pytest_collection_modifyitems(items):
    """Mark every test that runs on a Bridge (a parameter says "bridge") with ``bridge``; put the longest
    tests first (stable otherwise), so ``pytest -n 2`` starts them at once instead of last."""
    def priority(item) -> int:
        module = item.module.__name__ if getattr(item, "module", None) else ""
        if module in LONGEST_FIRST:
            return LONGEST_FIRST.index(module)
        return len(LONGEST_FIRST) + (0 if item.get_closest_marker("integration") else 1)

    items.sort(key=priority)
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        values = [v for p in params.values() for v in (p if isinstance(p, tuple) else (p,))]
        if "bridge" in values:
            item.add_marker(pytest.mark.bridge)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each backend in turn."""
    return request.param


@pytest.fixture(params=[(kind, backend) for backend in BACKENDS for kind in KINDS], ids=lambda p: "-".join(p))
def tiny_spec(request):
    """``(kind, backend)`` of every tiny model: GPT-2, Llama and Gemma-2 types on both backends."""
    return request.param


@pytest.fixture
def tiny_model(tiny_spec):
    """A tiny random model of each kind on each backend."""
    kind, backend = tiny_spec
    return make_tiny_model(kind, backend=backend)


@pytest.fixture
def tiny_tokens():
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 37, (2, 12), generator=gen)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M as a HookedTransformer (loaded once per test session)."""
    from tl_tunedlens import load_model

    if not hooked_available():
        pytest.skip("HookedTransformer is gone in this TransformerLens (4.x)")
    return load_model("smollm2-135m", backend="hooked")


@pytest.fixture(scope="session")
def smollm2_bridge():
    """The real SmolLM2-135M as a TransformerBridge in compatibility mode (loaded once per test session)."""
    from tl_tunedlens import load_model

    return load_model("smollm2-135m", backend="bridge")
