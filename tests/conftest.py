"""Shared fixtures: tiny random HookedTransformers (fast unit tests) and the real SmolLM2 (integration)."""

from __future__ import annotations

import warnings

import pytest
import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)
torch.set_num_threads(2)


def make_tiny_model(
    normalization_type: str | None = "LN",
    *,
    n_layers: int = 3,
    d_model: int = 16,
    d_vocab: int = 37,
    n_ctx: int = 32,
    seed: int = 0,
    process: bool = False,
    dtype: torch.dtype = torch.float32,
    **cfg_kwargs,
):
    """A random ``HookedTransformer`` built from config (no tokenizer unless asked).

    ``normalization_type``: "LN" (LayerNorm, GPT-2 style) or "RMS" (Llama style).
    ``process``: apply ``fold_ln`` / ``center_writing_weights`` / ``center_unembed`` like
    ``from_pretrained`` does, after randomising the norm weights so folding really changes them."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

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
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


def random_tuned_lens(model, scale: float = 0.2, seed: int = 3):
    """A ``TunedLens`` for ``model`` with seeded random (non-zero) translators."""
    from tl_tunedlens import TunedLens

    lens = TunedLens.from_model(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return lens


@pytest.fixture(params=["LN", "RMS"])
def tiny_model(request):
    """A tiny random model, once with LayerNorm and once with RMSNorm."""
    return make_tiny_model(request.param)


@pytest.fixture
def tiny_tokens():
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 37, (2, 12), generator=gen)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M as a HookedTransformer (loaded once per test session)."""
    from tl_tunedlens import load_model

    return load_model("smollm2-135m")
