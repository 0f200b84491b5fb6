"""The two TransformerLens backends: a lens moves between a HookedTransformer and the TransformerBridge of
the same weights, the identity checks hold across them, the fused training path runs on the Bridge,
``load_model(..., backend=)`` and ``--backend`` load every source, and the package imports on both lines."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from conftest import hooked_available, make_tiny_model, random_tuned_lens, tiny_hf_model, tiny_tokenizer
from tl_tunedlens import LensError, LensRecord, LogitLens, ModelLoadError, TunedLens, UnembedMismatchError, load_model
from tl_tunedlens.core.backend import backend_of, capture_residuals, linear_unembed_weights, model_facts
from tl_tunedlens.core.unembed import Unembed
from tl_tunedlens.core.vocab import AutogradProducts, FusedProducts, vocab_products

PACKAGE = Path(__file__).resolve().parents[1] / "tl_tunedlens"
needs_hooked = pytest.mark.skipif(not hooked_available(), reason="HookedTransformer is gone in TransformerLens 4.x")
bridge = pytest.mark.bridge


def hooked_twin(hf_model, kind: str, process: bool):
    """The HookedTransformer of ``hf_model``'s weights (TransformerLens 3.x's own weight conversion)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights, convert_llama_weights

    c = hf_model.config
    d_model = c.hidden_size
    common = dict(n_layers=c.num_hidden_layers, d_model=d_model, d_head=4, n_heads=d_model // 4, d_mlp=4 * d_model,
                  d_vocab=c.vocab_size, n_ctx=32, device="cpu")
    if kind == "LN":
        cfg = HookedTransformerConfig(**common, act_fn="gelu_new", normalization_type="LN", eps=c.layer_norm_epsilon,
                                      original_architecture="GPT2LMHeadModel")
        state = convert_gpt2_weights(hf_model, cfg)
    else:
        cfg = HookedTransformerConfig(**common, act_fn="silu", normalization_type="RMS", eps=c.rms_norm_eps,
                                      positional_embedding_type="rotary", rotary_dim=4, rotary_adjacent_pairs=False,
                                      rotary_base=c.rope_parameters["rope_theta"], gated_mlp=True, final_rms=True,
                                      original_architecture="LlamaForCausalLM")
        state = convert_llama_weights(hf_model, cfg)
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict({k: v.detach().clone() for k, v in state.items()}, fold_ln=process,
                                      center_writing_weights=process, center_unembed=process)
    return model.requires_grad_(False).eval()


def same_weights(kind: str, *, compat: bool = True, process: bool = True, seed: int = 0):
    """(HookedTransformer, TransformerBridge) of the same random Hugging Face model."""
    hooked = hooked_twin(tiny_hf_model(kind, seed=seed), kind, process)
    bridge_model = load_model(tiny_hf_model(kind, seed=seed), backend="bridge", tokenizer=tiny_tokenizer(),
                              compatibility_mode=compat)
    return hooked, bridge_model


def lens_log_probs(lens, model, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=lens.hook_names)
    return lens.log_probs_from_cache(cache)


# --- artifacts move between backends ----------------------------------------------------------
@needs_hooked
@pytest.mark.parametrize("kind", ["LN", "RMS"])
def test_a_lens_moves_between_backends_with_the_same_predictions(kind, tiny_tokens, tmp_path):
    hooked, bridge_model = same_weights(kind)
    assert (backend_of(hooked), backend_of(bridge_model)) == ("hooked", "bridge")
    with torch.no_grad():
        gap = (hooked(tiny_tokens).log_softmax(-1) - bridge_model(tiny_tokens).log_softmax(-1)).abs().max()
    assert gap < 1e-5  # compatibility mode processes the weights like HookedTransformer
    for source, target in ((hooked, bridge_model), (bridge_model, hooked)):
        lens = random_tuned_lens(source)
        folder = tmp_path / backend_of(source)
        lens.save(folder)
        moved = TunedLens.load(folder, target)
        assert moved.residual_stream == lens.residual_stream == ("centred" if kind == "LN" else "raw")
        diff = (lens_log_probs(lens, source, tiny_tokens) - lens_log_probs(moved, target, tiny_tokens)).abs()
        assert diff.amax(dim=(1, 2, 3)).max() < 1e-3  # nats, at every layer (measured here: ~1e-6)
        lens.check_model(target)  # the lens object itself accepts the other form too


@needs_hooked
@pytest.mark.parametrize("kind", ["LN", "RMS"])
def test_unprocessed_forms_of_the_same_weights_share_the_hash(kind):
    hooked, bridge_model = same_weights(kind, compat=False, process=False)
    assert Unembed(hooked).sha256 == Unembed(bridge_model).sha256  # the same parameters under the same names
    assert TunedLens.from_model(hooked).residual_stream == TunedLens.from_model(bridge_model).residual_stream == "raw"


@needs_hooked
def test_identity_checks_refuse_across_backends(tmp_path):
    hooked, _ = same_weights("LN")  # centred stream (center_writing_weights on a LayerNorm model)
    raw_bridge = load_model(tiny_hf_model("LN"), backend="bridge", tokenizer=tiny_tokenizer(), compatibility_mode=False)
    other = load_model(tiny_hf_model("LN", seed=7), backend="bridge", tokenizer=tiny_tokenizer())
    centred_lens = random_tuned_lens(hooked)
    with pytest.raises(UnembedMismatchError, match="different unembedding.*use the model the lens was trained on"):
        centred_lens.check_model(other)
    with pytest.raises(LensError, match="trained on a centred residual stream but the model's is raw") as err:
        centred_lens.check_model(raw_bridge)
    assert "\n" not in str(err.value)
    raw_lens = random_tuned_lens(raw_bridge)
    raw_lens.save(tmp_path / "raw")
    with pytest.raises(LensError, match="trained on the raw residual stream.*compatibility_mode=False") as err:
        TunedLens.load(tmp_path / "raw", hooked)
    assert "\n" not in str(err.value)
    # a centred lens converts exactly to the raw stream when loaded from its folder
    centred_lens.save(tmp_path / "centred")
    converted = TunedLens.load(tmp_path / "centred", raw_bridge)
    tokens = torch.randint(0, 37, (2, 10), generator=torch.Generator().manual_seed(3))
    diff = lens_log_probs(centred_lens, hooked, tokens) - lens_log_probs(converted, raw_bridge, tokens)
    assert diff.abs().max() < 1e-3


# --- what the backend layer reads from a Bridge -------------------------------------------------
@bridge
@pytest.mark.parametrize("kind", ["LN", "RMS", "gemma2"])
def test_bridge_facts(kind):
    raw, processed = make_tiny_model(kind, backend="bridge"), make_tiny_model(kind, backend="bridge", process=True)
    norm = "LN" if kind == "LN" else "RMS"
    assert model_facts(raw).normalization_type == norm
    assert model_facts(processed).normalization_type == norm + "Pre"  # folded by compatibility mode
    assert model_facts(raw).softcap == (5.0 if kind == "gemma2" else None)
    assert model_facts(raw).backend == "bridge" and model_facts(raw).n_layers == 3


@bridge
def test_fused_training_path_reads_the_bridge_weight_in_place(tiny_tokens):
    model = make_tiny_model("RMS", backend="bridge", process=True)
    weight = model.unembed.original_component.weight  # [d_vocab d_model] storage; W_U is its transposed view
    lens = random_tuned_lens(model)
    assert lens.unembed.fusable and isinstance(vocab_products(lens.unembed), FusedProducts)
    w_u, _ = linear_unembed_weights(model.unembed)
    assert w_u.data_ptr() == weight.data_ptr() and not w_u.is_contiguous()
    w_t, _ = lens.unembed.transposed_weights()
    assert w_t.data_ptr() == weight.data_ptr()  # no copy of W_U
    resids = capture_residuals(model, tiny_tokens, lens.hook_names).flatten(1, 2)
    h = lens.transform(resids[1], 1).detach().requires_grad_(True)
    grads = []
    for products in (FusedProducts(lens.unembed), AutogradProducts(lens.unembed)):
        h.grad = None
        logits = products.logits(h)
        assert torch.equal(logits, lens.unembed(h.detach()).float())
        products.backward(torch.ones_like(logits) / logits.shape[-1] - logits.softmax(-1))
        grads.append(h.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    model.unembed.original_component.weight.requires_grad_(True)  # a trainable unembedding is called instead
    assert not Unembed(model).fusable
    assert not Unembed(make_tiny_model("gemma2", backend="bridge")).fusable  # soft-capped: the autograd path


@bridge
@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_capture_stops_before_the_final_norm_and_unembedding(backend, tiny_tokens):
    model = make_tiny_model("RMS", backend=backend)
    lens = LogitLens.from_model(model)
    calls = []
    handle = model.unembed.register_forward_hook(lambda *args: calls.append(1))
    try:
        resids = capture_residuals(model, tiny_tokens, lens.hook_names[::-1])  # any order
        _, cache = model.run_with_cache(tiny_tokens, names_filter=lens.hook_names)
    finally:
        handle.remove()
    assert calls == [1]  # only run_with_cache ran the unembedding
    for i, name in enumerate(lens.hook_names[::-1]):
        assert torch.equal(resids[i], cache[name])
    assert not any(hp._forward_hooks for hp in model.hook_dict.values())  # no hook left behind
    with pytest.raises(LensError, match="no hook point 'blocks.9.hook_resid_post'"):
        capture_residuals(model, tiny_tokens, ["blocks.0.hook_resid_pre", "blocks.9.hook_resid_post"])


@bridge
def test_bridge_records_and_intervenes_on_its_own_forward(tiny_tokens):
    model = make_tiny_model("LN", backend="bridge", process=True)
    lens = random_tuned_lens(model)
    record = LensRecord()
    logits = model.run_with_hooks(tiny_tokens, fwd_hooks=lens.hooks(record, top_k=3))
    assert record.layers == lens.layers
    assert torch.equal(record.top_k_indices[lens.n_layers], logits.topk(3, dim=-1).indices)
    moved = model.run_with_hooks(tiny_tokens, fwd_hooks=lens.hooks(intervene=lens.n_layers - 1))
    assert not torch.allclose(moved, logits)


# --- loading ------------------------------------------------------------------------------------
@bridge
def test_load_model_sources_for_the_bridge(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf_model, tokenizer = tiny_hf_model("RMS"), tiny_tokenizer()
    hf_model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    from_folder = load_model(str(tmp_path / "tiny"))  # a folder: backend "auto" boots a Bridge
    in_memory = load_model(hf_model, tokenizer=tokenizer)
    assert backend_of(from_folder) == backend_of(in_memory) == "bridge"
    assert not any(p.requires_grad for p in from_folder.parameters())
    tokens = from_folder.to_tokens("t4 t5 t6 t7")
    with torch.no_grad():
        torch.testing.assert_close(from_folder(tokens), in_memory(tokens))
    with pytest.raises(ModelLoadError, match="no local tokenizer.*tokenizer="):
        load_model(tiny_hf_model("RMS"), backend="bridge")
    with pytest.raises(ModelLoadError, match="backend must be 'auto', 'hooked' or 'bridge'"):
        load_model("smollm2-135m", backend="vllm")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE=1.*not in the local Hugging Face cache"):
        load_model("some-org/no-such-model", backend="bridge")


@needs_hooked
def test_load_model_refuses_what_a_hooked_transformer_cannot_be(tmp_path):
    with pytest.raises(ModelLoadError, match="loads as a TransformerBridge: pass backend='bridge'"):
        load_model(tiny_hf_model("RMS"), backend="hooked")
    with pytest.raises(ModelLoadError, match="options of backend='bridge'"):
        load_model("smollm2-135m", backend="hooked", compatibility_mode=False)


def test_hooked_backend_on_transformerlens_4_is_a_clear_error(monkeypatch):
    import tl_tunedlens.models as models

    monkeypatch.setattr(models, "hooked_transformer_class", lambda: None)
    with pytest.raises(ModelLoadError, match="no longer has: use backend='bridge'"):
        load_model("smollm2-135m", backend="hooked")
    assert models.resolve_backend("auto", "smollm2-135m") == "bridge"


def test_every_command_that_loads_a_model_takes_backend():
    import argparse

    from tl_tunedlens.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    loading = []
    for name, sub in subparsers.choices.items():
        options = {opt for action in sub._actions for opt in action.option_strings}
        if name == "tokenize":  # loads only the tokenizer of --model
            continue
        if "--model" in options or name == "demo":  # the demo loads the embedded model
            loading.append(name)
            assert {"--backend", "--raw-weights"} <= options, name
    assert {"demo", "train", "eval", "show", "predict"} <= set(loading)


@bridge
def test_cli_predict_and_train_on_a_bridge_from_a_folder(tmp_path, capsys, monkeypatch):
    from tl_tunedlens.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_hf_model("LN").save_pretrained(tmp_path / "tiny")
    tiny_tokenizer().save_pretrained(tmp_path / "tiny")
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(8):
        (texts / f"{i}.txt").write_text(" ".join(f"t{(j * (i + 3)) % 33 + 4}" for j in range(80)))
    common = ["--model", str(tmp_path / "tiny"), "--backend", "bridge"]
    assert main(["train", *common, "--data", str(texts), "--out", str(tmp_path / "lens"), "--seq-len", "16",
                 "--steps", "2", "--tokens-per-step", "32", "--lstsq-tokens", "64", "--no-progress"]) == 0
    assert main(["predict", *common, "--lens", str(tmp_path / "lens"), "--text", "t4 t5 t6 t7"]) == 0
    out = capsys.readouterr().out
    assert "tuned" in out and "t" in out
    config = json.loads((tmp_path / "lens" / "config.json").read_text())
    assert config["residual_stream"] == "centred"  # compatibility mode on a LayerNorm model
    assert main(["predict", *common, "--raw-weights", "--lens", str(tmp_path / "lens"), "--text", "t4 t5"]) == 0


# --- the embedded model's weight layout ---------------------------------------------------------
@bridge
def test_llama_layout_round_trip_and_equals_transformerlens_conversion():
    from tl_tunedlens.models.llama import hf_to_hooked, hooked_to_hf, llama_from_hooked

    hf_model = tiny_hf_model("RMS")
    cfg = {"n_layers": 3, "n_heads": 4, "n_key_value_heads": 4, "d_head": 4, "d_model": 16, "d_mlp": 64,
           "d_vocab": 37, "n_ctx": 32, "act_fn": "silu", "eps": hf_model.config.rms_norm_eps,
           "rotary_base": hf_model.config.rope_parameters["rope_theta"]}
    hf_state = hf_model.state_dict()
    state = hf_to_hooked(hf_state, cfg)
    back = hooked_to_hf(state, cfg)
    assert back.keys() == hf_state.keys() and all(torch.equal(back[k], hf_state[k]) for k in back)
    rebuilt = llama_from_hooked(state, cfg)
    tokens = torch.randint(0, 37, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt(tokens).logits, hf_model(tokens).logits)
    if hooked_available():  # TransformerLens 3.x's own conversion gives the same tensors under the same names
        from transformer_lens import HookedTransformerConfig
        from transformer_lens.pretrained.weight_conversions import convert_llama_weights

        tl_cfg = HookedTransformerConfig(n_layers=3, d_model=16, d_head=4, n_heads=4, n_key_value_heads=4, d_mlp=64,
                                         d_vocab=37, n_ctx=32, act_fn="silu", normalization_type="RMS")
        theirs = convert_llama_weights(hf_model, tl_cfg)
        assert theirs.keys() == state.keys() and all(torch.equal(theirs[k], state[k]) for k in state)


# --- the package imports on both lines ----------------------------------------------------------
BOTH_LINES = {"transformer_lens.hook_points"}  # modules every supported TransformerLens has


@bridge
def test_importing_the_package_needs_only_what_both_transformerlens_lines_have():
    """Module-level imports of TransformerLens name only modules of both lines (``HookedTransformer``,
    ``transformer_lens.components`` and ``transformer_lens.pretrained`` are gone in 4.x)."""
    found = set()
    for module in PACKAGE.rglob("*.py"):
        for node in ast.parse(module.read_text()).body:  # module level only; TYPE_CHECKING blocks excluded
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("transformer_lens"):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("transformer_lens"))
    assert found <= BOTH_LINES, found
