"""The lens core on tiny random models of both backends (GPT-2, Llama and soft-capped Gemma-2 types, with/without
processing: HookedTransformer flags, or a Bridge's compatibility mode)."""

from __future__ import annotations

import pytest
import torch

from conftest import BACKENDS, make_tiny_model
from tl_tunedlens import LensError, LensRecord, LogitLens, TunedLens, UnembedMismatchError
from tl_tunedlens.core.layers import normalize_layer, resid_hook_names


def randomize(lens: TunedLens, scale: float = 0.2, seed: int = 0) -> TunedLens:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return lens


ALL_MODELS = [(kind, process, backend) for backend in BACKENDS
              for kind, process in [("LN", False), ("LN", True), ("RMS", False), ("RMS", True), ("gemma2", False)]]


@pytest.fixture(params=ALL_MODELS, ids=lambda p: f"{p[0]}-{'processed' if p[1] else 'raw'}-{p[2]}")
def model(request):
    kind, process, backend = request.param
    return make_tiny_model(kind, process=process, backend=backend)


def unembed_weight(model) -> torch.nn.Parameter:
    """The unembedding's weight parameter (a Bridge's ``W_U`` is a transposed view of it)."""
    original = getattr(model.unembed, "original_component", None)
    return original.weight if original is not None else model.unembed.W_U


def test_hook_names_follow_the_reference_indexing(model):
    lens = LogitLens.from_model(model)
    n = model.cfg.n_layers
    assert lens.hook_names == ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n)]
    assert lens.hook_names == resid_hook_names(n)
    assert all(name in model.hook_dict for name in lens.hook_names)
    assert lens.layers == list(range(n + 1))


def test_untrained_tuned_lens_equals_logit_lens_exactly(model, tiny_tokens):
    _, cache = model.run_with_cache(tiny_tokens)
    tuned, logit = TunedLens.from_model(model), LogitLens.from_model(model)
    for layer, name in enumerate(logit.hook_names):
        h = cache[name]
        assert torch.equal(tuned.transform(h, layer), h)
        assert torch.equal(tuned(h, layer), logit(h, layer))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_logit_lens_shares_an_unembed_only_of_the_same_model(backend, tiny_tokens):
    model, other = make_tiny_model("RMS", backend=backend), make_tiny_model("RMS", backend=backend)
    tuned = TunedLens.from_model(model)
    shared = LogitLens.from_model(model, unembed=tuned.unembed)
    assert shared.unembed is tuned.unembed
    assert torch.equal(shared(model.embed(tiny_tokens), 0), LogitLens.from_model(model)(model.embed(tiny_tokens), 0))
    own = LogitLens.from_model(other, unembed=tuned.unembed)  # another model's: not shared
    assert own.unembed is not tuned.unembed and own.unembed.same_modules(LogitLens.from_model(other).unembed)


def test_last_layer_equals_model_log_probs(model, tiny_tokens):
    lens = randomize(TunedLens.from_model(model))
    logits, cache = model.run_with_cache(tiny_tokens, names_filter=lens.hook_names)
    log_probs = lens.log_probs_from_cache(cache)
    assert log_probs.shape == (model.cfg.n_layers + 1, *tiny_tokens.shape, model.cfg.d_vocab)
    assert torch.equal(log_probs[-1], logits.log_softmax(-1))
    assert torch.equal(lens.logits_from_cache(cache)[-1], logits)


def test_cache_hook_and_direct_routes_agree_exactly(model, tiny_tokens):
    lens = randomize(TunedLens.from_model(model))
    _, cache = model.run_with_cache(tiny_tokens, names_filter=lens.hook_names)
    from_cache = lens.log_probs_from_cache(cache)
    record = LensRecord()
    model.run_with_hooks(tiny_tokens, fwd_hooks=lens.hooks(record))
    assert record.layers == lens.layers
    assert torch.equal(record.stack(), from_cache)
    for layer, name in enumerate(lens.hook_names):
        assert torch.equal(lens.log_probs(cache[name], layer), from_cache[layer])


def test_recording_options_select_layers_positions_and_top_k(model, tiny_tokens):
    lens = randomize(TunedLens.from_model(model))
    _, cache = model.run_with_cache(tiny_tokens, names_filter=lens.hook_names)
    full = lens.log_probs_from_cache(cache)
    record = LensRecord()
    model.run_with_hooks(tiny_tokens, fwd_hooks=lens.hooks(record, layers=[1, -1], positions=[0, -1], top_k=5))
    n = model.cfg.n_layers
    assert sorted(record.top_k_log_probs) == [1, n] and not record.log_probs
    for layer in (1, n):
        expected_values, expected_ids = full[layer][:, [0, -1]].topk(5, dim=-1)
        assert record.top_k_log_probs[layer].shape == (tiny_tokens.shape[0], 2, 5)
        torch.testing.assert_close(record.top_k_log_probs[layer], expected_values, atol=1e-6, rtol=0)
        assert torch.equal(record.top_k_indices[layer], expected_ids)
    sliced = LensRecord()
    model.run_with_hooks(tiny_tokens, fwd_hooks=lens.hooks(sliced, positions=slice(2, 5)))
    torch.testing.assert_close(sliced.stack(), full[:, :, 2:5], atol=1e-6, rtol=0)


def test_recording_does_not_change_the_model_or_its_cache(model, tiny_tokens):
    lens = randomize(TunedLens.from_model(model))
    plain_logits, plain_cache = model.run_with_cache(tiny_tokens)
    with model.hooks(fwd_hooks=lens.hooks(LensRecord())):
        logits, cache = model.run_with_cache(tiny_tokens)
    assert torch.equal(logits, plain_logits)
    for name in plain_cache.keys():
        assert torch.equal(cache[name], plain_cache[name]), name
    # the model's ln_final hooks are silenced while the lens decodes: they fire once per forward
    calls = []
    counter = ("ln_final.hook_normalized", lambda x, hook: calls.append(hook.name))
    model.run_with_hooks(tiny_tokens, fwd_hooks=[counter] + lens.hooks(LensRecord()))
    assert calls == ["ln_final.hook_normalized"]


def test_intervention_replaces_the_residual_with_the_translated_one(model, tiny_tokens):
    layer = 1
    lens = randomize(TunedLens.from_model(model))
    plain = model(tiny_tokens)
    intervened = model.run_with_hooks(tiny_tokens, fwd_hooks=lens.hooks(intervene=layer))
    name = lens.hook_names[layer]
    manual = model.run_with_hooks(tiny_tokens, fwd_hooks=[(name, lambda h, hook: h + lens.translators[layer](h))])
    assert torch.equal(intervened, manual)
    assert not torch.allclose(intervened, plain)
    identity = TunedLens.from_model(model)
    assert torch.equal(model.run_with_hooks(tiny_tokens, fwd_hooks=identity.hooks(intervene=layer)), plain)
    # only chosen positions change: earlier positions are untouched (causal model)
    partial = model.run_with_hooks(tiny_tokens, fwd_hooks=lens.hooks(intervene=layer, positions=[-1]))
    assert torch.equal(partial[:, :-1], plain[:, :-1]) and not torch.allclose(partial[:, -1], plain[:, -1])


def test_any_leading_batch_shape(model):
    lens = randomize(TunedLens.from_model(model))
    d = model.cfg.d_model
    h = torch.randn(2, 3, 4, d)
    out = lens(h, 1)
    assert out.shape == (2, 3, 4, model.cfg.d_vocab)
    torch.testing.assert_close(lens(h[1, 2, 3], 1), out[1, 2, 3], atol=1e-5, rtol=0)
    assert lens.transform(h, 2).shape == h.shape


def test_negative_layers_count_from_the_end(model, tiny_tokens):
    lens = randomize(TunedLens.from_model(model))
    n = model.cfg.n_layers
    h = torch.randn(3, model.cfg.d_model)
    assert torch.equal(lens(h, -1), lens(h, n))
    assert torch.equal(lens(h, -(n + 1)), lens(h, 0))
    assert lens.hook_name(-1) == f"blocks.{n - 1}.hook_resid_post"
    assert normalize_layer(-2, n) == n - 1


def test_layers_by_hook_name(model, tiny_tokens):
    lens = randomize(TunedLens.from_model(model))
    n = model.cfg.n_layers
    for layer, name in enumerate(lens.hook_names):
        assert lens.layer_of(name) == layer
    assert lens.layer_of("blocks.1.hook_resid_post") == 2 and lens.layer_of("blocks.1.hook_resid_pre") == 1
    assert lens.layer_of("blocks.1.hook_out") == 2 and lens.layer_of("blocks.1.hook_in") == 1  # Bridge names
    assert lens.layer_of("blocks.1.hook_resid_post.hook_sae_output") == 2  # an sae-lens SAE at the site
    assert lens.layer_of(f"blocks.{n - 1}.hook_resid_post") == n and lens.layer_of(-1) == n
    h = torch.randn(3, model.cfg.d_model)
    assert torch.equal(lens(h, "blocks.0.hook_resid_post"), lens(h, 1))
    assert lens.hook_name("blocks.1.hook_resid_post") == "blocks.1.hook_resid_post"
    by_name, by_number = LensRecord(), LensRecord()
    model.run_with_hooks(tiny_tokens, fwd_hooks=lens.hooks(by_name, layers=["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"]))
    model.run_with_hooks(tiny_tokens, fwd_hooks=lens.hooks(by_number, layers=[0, 2]))
    assert by_name.layers == [0, 2] and torch.equal(by_name.stack(), by_number.stack())
    with pytest.raises(LensError, match="'blocks.0.hook_mlp_out' is not a lens site"):
        lens.layer_of("blocks.0.hook_mlp_out")
    with pytest.raises(LensError, match=f"names block {n} but the model has blocks 0..{n - 1}"):
        lens.layer_of(f"blocks.{n}.hook_resid_pre")


def test_bias_false(model, tiny_tokens):
    lens = TunedLens.from_model(model, bias=False)
    assert all(t.bias is None for t in lens.translators)
    assert sorted(lens.state_dict()) == [f"translators.{i}.weight" for i in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tiny_tokens, names_filter=lens.hook_names)
    h = cache[lens.hook_names[1]]
    assert torch.equal(lens(h, 1), LogitLens.from_model(model)(h, 1))
    randomize(lens)
    torch.testing.assert_close(lens.transform(h, 1), h + h @ lens.translators[1].weight.T)


def test_forward_all_stacks_every_layer(model, tiny_tokens):
    lens = randomize(TunedLens.from_model(model))
    _, cache = model.run_with_cache(tiny_tokens, names_filter=lens.hook_names)
    resids = lens.residuals_from_cache(cache)
    assert resids.shape == (model.cfg.n_layers + 1, *tiny_tokens.shape, model.cfg.d_model)
    assert torch.equal(lens.forward_all(resids), lens.logits_from_cache(cache))
    assert torch.equal(lens.forward_all(list(resids)), lens.forward_all(resids))
    with pytest.raises(LensError, match="one residual per lens layer"):
        lens.forward_all(resids[:-1])


def test_only_translators_are_parameters_and_they_get_gradients(model, tiny_tokens):
    lens = randomize(TunedLens.from_model(model))
    assert len(list(lens.parameters())) == 2 * model.cfg.n_layers
    assert LogitLens.from_model(model).state_dict() == {}
    _, cache = model.run_with_cache(tiny_tokens, names_filter=lens.hook_names)
    lens.log_probs(cache[lens.hook_names[1]], 1).sum().backward()
    assert lens.translators[1].weight.grad is not None and lens.translators[1].weight.grad.abs().sum() > 0
    assert lens.translators[0].weight.grad is None
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("backend", BACKENDS)
def test_translators_in_float32_for_a_bfloat16_model(tiny_tokens, backend):
    model = make_tiny_model("RMS", dtype=torch.bfloat16, backend=backend)
    lens = TunedLens.from_model(model)
    assert lens.translators[0].weight.dtype == torch.float32
    logits, cache = model.run_with_cache(tiny_tokens, names_filter=lens.hook_names)
    assert lens(cache[lens.hook_names[2]], 2).dtype == torch.bfloat16
    assert torch.equal(lens.logits_from_cache(cache)[-1], logits)
    assert torch.equal(lens(cache[lens.hook_names[1]], 1), LogitLens.from_model(model)(cache[lens.hook_names[1]], 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_softcap_is_applied_like_the_model(tiny_tokens, backend):
    model = make_tiny_model("RMS", output_logits_soft_cap=2.0, backend=backend)  # Gemma-2 type on the Bridge
    lens = TunedLens.from_model(model)
    logits, cache = model.run_with_cache(tiny_tokens, names_filter=lens.hook_names)
    assert logits.abs().max() <= 2.0
    assert torch.equal(lens.logits_from_cache(cache)[-1], logits)


# --- bad input -------------------------------------------------------------------------------


def test_wrong_d_model_is_a_clear_error(model):
    lens = TunedLens.from_model(model)
    with pytest.raises(LensError, match=r"expects d_model=16"):
        lens(torch.randn(2, 17), 1)
    with pytest.raises(LensError, match=r"expects d_model=16"):
        lens.transform(torch.tensor(1.0), 1)


@pytest.mark.parametrize("layer", [4, 100, -5])
def test_layer_out_of_range_is_a_clear_error(model, layer):
    lens = TunedLens.from_model(model)
    with pytest.raises(LensError, match=rf"layer {layer} is out of range: this lens has layers 0..3"):
        lens(torch.randn(2, 16), layer)
    with pytest.raises(LensError, match="out of range"):
        lens.hooks(LensRecord(), layers=[layer])


def test_non_integer_layer_is_a_clear_error(model):
    with pytest.raises(LensError, match="layer must be an integer"):
        TunedLens.from_model(model)(torch.randn(16), None)
    with pytest.raises(LensError, match="'first' is not a lens site"):
        TunedLens.from_model(model)(torch.randn(16), "first")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_different_model_is_refused(tiny_tokens, backend):
    model_a, model_b = make_tiny_model("LN", seed=0, backend=backend), make_tiny_model("LN", seed=1, backend=backend)
    lens = TunedLens.from_model(model_a)
    with pytest.raises(UnembedMismatchError, match="different unembedding"):
        lens.check_model(model_b)
    _, cache_b = model_b.run_with_cache(tiny_tokens, names_filter=lens.hook_names)
    with pytest.raises(UnembedMismatchError, match="use the model the lens was trained on"):
        lens.logits_from_cache(cache_b)
    with pytest.raises(LensError, match="this lens has 3 layers but the model has 2"):
        lens.check_model(make_tiny_model("LN", n_layers=2, backend=backend))
    with pytest.raises(UnembedMismatchError, match="d_vocab=37 but the model has d_model=16, d_vocab=41"):
        lens.check_model(make_tiny_model("LN", d_vocab=41, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", ["LN", "RMS"])
def test_the_same_model_processed_differently_is_accepted(norm, backend):
    raw, processed = make_tiny_model(norm, backend=backend), make_tiny_model(norm, backend=backend)
    if backend == "bridge":  # fold_ln + center_unembed keep the stream
        processed.enable_compatibility_mode(disable_warnings=True, center_writing_weights=False)
    else:
        state = {k: v.clone() for k, v in processed.state_dict().items()}
        processed.load_and_process_state_dict(state, fold_ln=True, center_writing_weights=False, center_unembed=True)
    lens = TunedLens.from_model(raw)
    assert lens.unembed_sha256 != TunedLens.from_model(processed).unembed_sha256
    lens.check_model(processed)  # same function: the fingerprint matches


def test_a_cache_without_the_lens_hooks_is_a_clear_error(model, tiny_tokens):
    lens = TunedLens.from_model(model)
    _, cache = model.run_with_cache(tiny_tokens, names_filter=lambda name: name.endswith("hook_resid_post"))
    with pytest.raises(LensError, match="the cache has no hook point .blocks.0.hook_resid_pre.*names_filter=lens.names_filter"):
        lens.logits_from_cache(cache)


def test_hooks_need_something_to_do(model):
    lens = TunedLens.from_model(model)
    with pytest.raises(LensError, match="needs a LensRecord"):
        lens.hooks()
    with pytest.raises(LensError, match="record must be a LensRecord"):
        lens.hooks({})
    with pytest.raises(LensError, match="top_k=0 is out of range"):
        lens.hooks(LensRecord(), top_k=0)
    with pytest.raises(LensError, match="empty"):
        LensRecord().stack()


def test_not_a_transformerlens_model_is_a_clear_error():
    with pytest.raises(LensError, match="expected a TransformerLens HookedTransformer or TransformerBridge"):
        TunedLens.from_model(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lens_for_the_centred_stream_is_refused_on_the_raw_one(backend):
    centred = make_tiny_model("LN", process=True, backend=backend)  # center_writing_weights on a LayerNorm model
    raw = make_tiny_model("LN", process=False, backend=backend)
    lens = TunedLens.from_model(centred)
    assert lens.residual_stream == "centred" and TunedLens.from_model(raw).residual_stream == "raw"
    with pytest.raises(LensError, match="trained on a centred residual stream but the model's is raw"):
        lens.check_model(raw)
    TunedLens.from_model(make_tiny_model("RMS", process=True, backend=backend)).check_model(
        make_tiny_model("RMS", backend=backend))


def test_cached_unembedding_is_bit_identical_and_follows_weight_changes(model, tiny_tokens):
    lens = TunedLens.from_model(model)
    _, cache = model.run_with_cache(tiny_tokens)
    h = cache["ln_final.hook_normalized"]
    assert torch.equal(lens.unembed.project(h), model.unembed(h))
    with torch.no_grad():
        model.unembed.W_U.mul_(2.0)  # in-place change: the cached transpose must be refreshed
    assert torch.equal(lens.unembed.project(h), model.unembed(h))
    unembed_weight(model).requires_grad_(True)  # trainable unembedding: the module itself is called
    out = lens.unembed.project(h)
    out.sum().backward()
    assert unembed_weight(model).grad is not None
