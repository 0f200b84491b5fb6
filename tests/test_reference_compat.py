"""One-to-one compatibility with the reference ``tuned-lens==0.2.0``, used as the oracle.

Small Hugging Face Llama-type and GPT-2-type models are built from config and converted to
HookedTransformers, or wrapped as TransformerBridges; a reference lens with non-zero weights must give the same log-probs
through our lens (within 1e-5 at every layer), and ours through the reference. The reference
is installed with ``pip install --no-deps tuned-lens==0.2.0`` (see the Makefile); importing
``tuned_lens.nn`` needs only torch, numpy, transformers and huggingface_hub.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import warnings

import pytest
import torch

from tl_tunedlens import LensError, TunedLens, UnembedMismatchError
from tl_tunedlens.core.backend import hooked_transformer_class
from tl_tunedlens.core.layers import resid_hook_name

ref = pytest.importorskip("tuned_lens.nn", reason="the oracle needs `pip install --no-deps tuned-lens==0.2.0`")
_surgery = pytest.importorskip("tuned_lens.model_surgery")
if hooked_transformer_class() is None:
    # TransformerLens 4.x: the oracle's `isinstance(model, tl.HookedTransformer)` raises; it only ever sees
    # Hugging Face models here, so tell it TransformerLens is absent
    _surgery._transformer_lens_available = False

N_LAYERS, D_MODEL, D_VOCAB, N_CTX = 3, 32, 61, 32
TOL = 1e-5


# --- tiny Hugging Face models and their TransformerLens conversions -----------------------
def hf_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=D_VOCAB, hidden_size=D_MODEL, intermediate_size=64, num_hidden_layers=N_LAYERS,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=N_CTX,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, initializer_range=0.2)
    model = LlamaForCausalLM(config).eval()
    _randomise_norms(model)
    return model


def hf_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=D_VOCAB, n_embd=D_MODEL, n_layer=N_LAYERS, n_head=4, n_positions=N_CTX,
                        initializer_range=0.2)
    model = GPT2LMHeadModel(config).eval()
    _randomise_norms(model)
    return model


@torch.no_grad()
def _randomise_norms(model):
    for name, param in model.named_parameters():
        if "norm" in name or ".ln_" in name:
            param.copy_((1.0 + 0.3 * torch.randn_like(param)) if name.endswith("weight") else 0.1 * torch.randn_like(param))


def to_tl(hf, *, backend="hooked", fold_ln=True, center_writing_weights=True, center_unembed=True):
    if backend == "bridge":  # a copy: booting and compatibility mode change the Hugging Face model in place
        from conftest import tiny_tokenizer
        from tl_tunedlens import load_model

        processed = fold_ln or center_writing_weights or center_unembed
        return load_model(copy.deepcopy(hf), backend="bridge", tokenizer=tiny_tokenizer(D_VOCAB),
                          compatibility_mode=processed, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                          center_unembed=center_unembed)
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights, convert_llama_weights

    c = hf.config
    common = dict(d_model=D_MODEL, d_head=D_MODEL // 4, n_heads=4, n_layers=N_LAYERS, n_ctx=N_CTX, d_vocab=D_VOCAB,
                  model_name=c.model_type + "-tiny", device="cpu")
    if c.model_type == "llama":
        cfg = HookedTransformerConfig(**common, n_key_value_heads=2, d_mlp=64, eps=c.rms_norm_eps, act_fn="silu",
                                      normalization_type="RMS", positional_embedding_type="rotary",
                                      rotary_adjacent_pairs=False, rotary_dim=D_MODEL // 4, rotary_base=10000.0,
                                      final_rms=True, gated_mlp=True, original_architecture="LlamaForCausalLM")
        state = convert_llama_weights(hf, cfg)
    else:
        cfg = HookedTransformerConfig(**common, d_mlp=4 * D_MODEL, eps=c.layer_norm_epsilon, act_fn="gelu_new",
                                      normalization_type="LN", positional_embedding_type="standard",
                                      original_architecture="GPT2LMHeadModel")
        state = convert_gpt2_weights(hf, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg)
        model.load_and_process_state_dict({k: v.clone() for k, v in state.items()}, fold_ln=fold_ln,
                                          center_writing_weights=center_writing_weights, center_unembed=center_unembed)
    return model.eval()


TOKENS = torch.randint(0, D_VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def ref_log_probs(ref_lens, hf):
    """The reference lens on Hugging Face hidden states: [layer, batch, pos, vocab] (final = model)."""
    out = hf(TOKENS, output_hidden_states=True)
    rows = [ref_lens(out.hidden_states[i], i).log_softmax(-1) for i in range(N_LAYERS)]
    return torch.stack(rows + [out.logits.log_softmax(-1)])


@torch.no_grad()
def our_log_probs(lens, model):
    _, cache = model.run_with_cache(TOKENS, names_filter=lens.hook_names)
    return torch.stack([lens.log_probs(cache[resid_hook_name(i)], i) for i in range(N_LAYERS + 1)])


@torch.no_grad()
def randomise(module, seed=2, scale=0.1):
    gen = torch.Generator().manual_seed(seed)
    for param in module.parameters():
        param.copy_(scale * torch.randn(param.shape, generator=gen))


def reference_lens(hf):
    lens = ref.TunedLens.from_model(hf)
    randomise(lens.layer_translators)
    return lens


# Processing of the TransformerLens model in each case; GPT-2 (LayerNorm) must not centre writing weights.
# On a Bridge, "raw" is the Hugging Face model itself (no compatibility mode).
FLAGS = {
    "llama-raw": (hf_llama, dict(fold_ln=False, center_writing_weights=False, center_unembed=False)),
    "llama-processed": (hf_llama, dict(fold_ln=True, center_writing_weights=True, center_unembed=True)),
    "gpt2-raw": (hf_gpt2, dict(fold_ln=False, center_writing_weights=False, center_unembed=False)),
    "gpt2-folded": (hf_gpt2, dict(fold_ln=True, center_writing_weights=False, center_unembed=True)),
}
CASES = {(name, backend): (make_hf, flags) for backend in ("hooked", "bridge") for name, (make_hf, flags) in FLAGS.items()}


@pytest.fixture(scope="module", params=list(CASES), ids=lambda p: "-".join(p))
def case(request):
    make_hf, flags = CASES[request.param]
    hf = make_hf()
    name, backend = request.param
    return f"{name} {backend}", hf, to_tl(hf, backend=backend, **flags)


def test_reference_lens_loads_exactly(case, tmp_path):
    name, hf, model = case
    ref_lens = reference_lens(hf)
    ref_lens.save(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # processed models: the hash cannot be checked (a warning)
        lens = TunedLens.from_pretrained(tmp_path, model=model)
    for i, translator in enumerate(ref_lens.layer_translators):
        assert torch.equal(lens.translators[i].weight, translator.weight)
        assert torch.equal(lens.translators[i].bias, translator.bias)
    diff = (our_log_probs(lens, model) - ref_log_probs(ref_lens, hf)).abs().amax(dim=(1, 2, 3))
    assert diff.max().item() < TOL, diff


def test_our_lens_loads_exactly_in_reference(case, tmp_path):
    name, hf, model = case
    lens = TunedLens.from_model(model)
    randomise(lens, seed=3)
    lens.save(tmp_path, format="tuned-lens")
    ref_lens = ref.TunedLens.from_model_and_pretrained(hf, str(tmp_path))
    diff = (our_log_probs(lens, model) - ref_log_probs(ref_lens, hf)).abs().amax(dim=(1, 2, 3))
    assert diff.max().item() < TOL, diff


def test_lens_trained_on_centred_stream_exports_exactly(tmp_path):
    """A GPT-2 lens trained on TransformerLens's default (centred) stream converts exactly (A -> A P)."""
    hf = hf_gpt2()
    model = to_tl(hf)  # from_pretrained's defaults: centred writing weights
    lens = TunedLens.from_model(model)
    assert lens.residual_stream == "centred"
    randomise(lens, seed=4)
    lens.save(tmp_path / "ref", format="tuned-lens")
    ref_lens = ref.TunedLens.from_model_and_pretrained(hf, str(tmp_path / "ref"))
    diff = (our_log_probs(lens, model) - ref_log_probs(ref_lens, hf)).abs().max().item()
    assert diff < TOL
    # our format, loaded into the raw-stream model, converts the same way
    lens.save(tmp_path / "ours")
    raw_model = to_tl(hf, center_writing_weights=False)
    raw_lens = TunedLens.load(tmp_path / "ours", raw_model)
    assert raw_lens.residual_stream == "raw"
    assert (our_log_probs(raw_lens, raw_model) - our_log_probs(lens, model)).abs().max().item() < TOL


def test_reference_lens_refuses_centred_model(tmp_path):
    hf = hf_gpt2()
    reference_lens(hf).save(tmp_path)
    with pytest.raises(LensError, match="center_writing_weights=False") as info:
        TunedLens.from_pretrained(tmp_path, model=to_tl(hf))
    assert "\n" not in str(info.value) and "mean-centred" in str(info.value)


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_unembed_hash_matches_reference_and_old_spelling(tmp_path, backend):
    hf = hf_llama()
    model = to_tl(hf, backend=backend, fold_ln=False, center_unembed=False)
    ref_lens = reference_lens(hf)
    assert TunedLens.from_model(model).reference_unembed_hash == ref_lens.config.unembed_hash
    ref_lens.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["unemebd_hash"] = config.pop("unembed_hash")  # older reference files
    (tmp_path / "config.json").write_text(json.dumps(config))
    lens = TunedLens.load(tmp_path, model)
    assert lens.reference_unembed_hash == ref_lens.config.unembed_hash
    # a different unembedding is refused on an unprocessed model, warned about on a processed one
    config["unemebd_hash"] = "0" * 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnembedMismatchError, match="hash 000000000000"):
        TunedLens.load(tmp_path, model)
    with pytest.warns(UserWarning, match="cannot be checked"):
        TunedLens.load(tmp_path, to_tl(hf, backend=backend))


def test_fp16_params_and_bias_free_reference_lens(tmp_path):
    hf = hf_llama()
    model = to_tl(hf)
    gen = torch.Generator().manual_seed(5)
    state = {f"{i}.weight": (0.1 * torch.randn(D_MODEL, D_MODEL, generator=gen)).half() for i in range(N_LAYERS)}
    torch.save(state, tmp_path / "params.pt")
    (tmp_path / "config.json").write_text(json.dumps(
        {"base_model_name_or_path": "tiny", "d_model": D_MODEL, "num_hidden_layers": N_LAYERS, "bias": False,
         "lens_type": "linear_tuned_lens"}))
    lens = TunedLens.load(tmp_path, model)
    assert not lens.bias and lens.translators[0].weight.dtype == torch.float32
    for i in range(N_LAYERS):
        assert torch.equal(lens.translators[i].weight, state[f"{i}.weight"].float())
    # exported back: zero biases (the reference cannot build bias-free lenses) and the same predictions
    lens.save(tmp_path / "out", format="tuned-lens")
    ref_lens = ref.TunedLens.from_model_and_pretrained(hf, str(tmp_path / "out"))
    assert all(torch.equal(t.bias, torch.zeros(D_MODEL)) for t in ref_lens.layer_translators)
    assert (our_log_probs(lens, model) - ref_log_probs(ref_lens, hf)).abs().max().item() < TOL


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_params_pickle_is_not_run(tmp_path, writer):
    model = to_tl(hf_llama())
    marker = tmp_path / "pwned"
    payload = {"0.weight": _RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, tmp_path / "params.pt")
    else:
        with open(tmp_path / "params.pt", "wb") as f:
            pickle.dump(payload, f, protocol=2)
    (tmp_path / "config.json").write_text(json.dumps({"d_model": D_MODEL, "num_hidden_layers": N_LAYERS}))
    with pytest.raises(LensError, match="params.pt is not a plain tensor state dict"):
        TunedLens.load(tmp_path, model)
    assert not marker.exists()

