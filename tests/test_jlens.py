"""Jacobian lenses (TransformerLens 4.x ``JacobianLens``) as lenses of ours, both ways.

Our own code writes and reads the artifact (round trips, refusals, one-line errors for bad files) on both
backends; against TransformerLens's ``JacobianLens`` (in 3.9 and 4.x, on a raw Bridge), our readout and
interventions of an imported J-lens equal TL's own, and TL loads what we export."""

from __future__ import annotations

import inspect

import pytest
import torch

from conftest import BACKENDS, make_tiny_model, random_tuned_lens
from tl_tunedlens import LensError, LogitLens, TunedLens

PROMPTS = ["t5 t6 t7 t8 t9 t10 t11 t12 t13", "t20 t21 t22 t23 t24 t25 t26 t27", "t30 t9 t4 t33 t8 t7 t6"]
PROMPT = "t5 t9 t30 t4 t11 t20 t7"


@pytest.fixture
def JacobianLens():
    try:
        from transformer_lens.tools.analysis import JacobianLens
    except ImportError:
        pytest.skip("this TransformerLens has no JacobianLens (transformer_lens.tools.analysis, in 3.9 and 4.x)")
    return JacobianLens


def bias_free_lens(model, scale: float = 0.2, seed: int = 3) -> TunedLens:
    lens = TunedLens.from_model(model, bias=False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for translator in lens.translators:
            translator.weight.copy_(scale * torch.randn(translator.weight.shape, generator=gen))
    return lens


def random_artifact(path, n_layers: int = 3, d_model: int = 16, seed: int = 0, **changes):
    gen = torch.Generator().manual_seed(seed)
    payload = {"J": {l: (torch.eye(d_model) + 0.3 * torch.randn(d_model, d_model, generator=gen)).half()
                     for l in range(n_layers - 1)},
               "n_prompts": 4, "source_layers": list(range(n_layers - 1)), "d_model": d_model,
               "metadata": {"corpus": "test", "target_layer": n_layers - 1}}
    payload.update(changes)
    torch.save(payload, path)
    return payload


# --- our own reading and writing, on both TransformerLens lines and both backends -----------
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_artifact_becomes_a_bias_free_lens_with_translators_j_minus_identity(backend, tmp_path):
    model = make_tiny_model("RMS", backend=backend)
    payload = random_artifact(tmp_path / "j.pt")
    lens = TunedLens.from_jacobian_lens(tmp_path / "j.pt", model)
    assert not lens.bias and lens.residual_stream == "raw"
    eye = torch.eye(16)
    assert torch.equal(lens.translators[0].weight, torch.zeros(16, 16))   # the embeddings: the logit lens
    for layer, matrix in payload["J"].items():
        assert torch.equal(lens.translators[layer + 1].weight + eye, matrix.float())   # exact for fp16 entries
    assert lens.training_info["method"] == "jacobian_lens" and lens.training_info["lens_layers"] == [1, 2]
    h = torch.randn(5, 16)
    assert torch.allclose(lens(h, 2), LogitLens.from_model(model)(h @ payload["J"][1].float().T, 3), atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_export_then_import_round_trips(backend, tmp_path):
    model = make_tiny_model("RMS", backend=backend)
    lens = bias_free_lens(model)
    path = lens.to_jacobian_lens(tmp_path / "ours.pt", dtype=torch.float32)
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"J", "n_prompts", "source_layers", "d_model", "metadata"}
    assert payload["source_layers"] == [0, 1] and payload["d_model"] == 16 and payload["n_prompts"] == 0
    back = TunedLens.from_jacobian_lens(path, model)
    for layer in (1, 2):
        assert torch.allclose(back.translators[layer].weight, lens.translators[layer].weight, atol=1e-6)
    # fp16 (the default): the second export is the first, bit for bit
    first = torch.load(lens.to_jacobian_lens(tmp_path / "a.pt"), weights_only=True)
    second = torch.load(TunedLens.from_jacobian_lens(tmp_path / "a.pt", model).to_jacobian_lens(tmp_path / "b.pt"),
                        weights_only=True)
    assert all(torch.equal(first["J"][l], second["J"][l]) for l in first["J"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_imported_lens_saves_and_loads_with_its_provenance(backend, tmp_path):
    model = make_tiny_model("RMS", backend=backend)
    random_artifact(tmp_path / "j.pt")
    lens = TunedLens.from_jacobian_lens(tmp_path / "j.pt", model)
    lens.save(tmp_path / "lens")
    loaded = TunedLens.load(tmp_path / "lens", model)
    assert loaded.training_info["jacobian_metadata"]["corpus"] == "test"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), lens.state_dict().values()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lens_with_a_nonzero_bias_is_refused_and_one_with_zero_biases_exports(backend, tmp_path):
    model = make_tiny_model("RMS", backend=backend)
    with pytest.raises(LensError, match="non-zero bias") as err:
        random_tuned_lens(model).to_jacobian_lens(tmp_path / "x.pt")
    assert "\n" not in str(err.value) and not (tmp_path / "x.pt").exists()
    zero_bias = TunedLens.from_model(model, bias=True)
    with torch.no_grad():
        zero_bias.translators[1].weight.copy_(bias_free_lens(model).translators[1].weight)
    payload = torch.load(zero_bias.to_jacobian_lens(tmp_path / "z.pt", dtype=torch.float32), weights_only=True)
    assert torch.allclose(payload["J"][0], torch.eye(16) + zero_bias.translators[1].weight, atol=1e-6)
    assert torch.equal(payload["J"][1], torch.eye(16))
    assert torch.equal(torch.load(LogitLens.from_model(model).to_jacobian_lens(tmp_path / "l.pt"))["J"][0],
                       torch.eye(16, dtype=torch.float16))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_mean_centred_model_is_refused_both_ways(backend, tmp_path):
    model = make_tiny_model("LN", backend=backend, process=True)   # center_writing_weights / compatibility mode
    random_artifact(tmp_path / "j.pt")
    with pytest.raises(LensError, match="mean-centred") as err:
        TunedLens.from_jacobian_lens(tmp_path / "j.pt", model)
    assert "\n" not in str(err.value)
    with pytest.raises(LensError, match="mean-centred"):
        bias_free_lens(model).to_jacobian_lens(tmp_path / "x.pt")


@pytest.mark.bridge
def test_a_lens_on_other_hook_points_does_not_export(tmp_path):
    model = make_tiny_model("RMS", backend="bridge")
    with pytest.raises(LensError, match="default hook points"):
        TunedLens.from_model(model, bias=False, hook_names="resid_mid").to_jacobian_lens(tmp_path / "x.pt")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


BAD_FILES = {   # case: (what is written: "bytes", a "payload" as is, or changes to a good "artifact"; the message)
    "missing": (None, None, "no J-lens file"),
    "not torch": ("bytes", b"not a torch file", "truncated or not a torch file"),
    "code in the pickle": ("payload", {"J": Evil()}, "was not unpickled"),
    "not a dict": ("payload", [1, 2], "not a J-lens dict"),
    "no J": ("payload", {"d_model": 16}, "lacks the key 'J'"),
    "fit checkpoint": ("payload", {"jacobian_sum": {}, "n_done": 2}, "fit checkpoint"),
    "wrong shape": ("artifact", dict(J={0: torch.zeros(8, 8)}, source_layers=[0]), r"J\[0\] must be a float \[16, 16\]"),
    "non-finite": ("artifact", dict(J={0: torch.full((16, 16), float("nan"))}, source_layers=[0]), "non-finite"),
    "layer list disagrees": ("artifact", dict(source_layers=[0, 5]), "do not match the layers"),
    "too deep for the model": ("artifact", dict(J={5: torch.eye(16)}, source_layers=[5]), "source layer 5"),
    "another width": ("artifact", dict(d_model=8, J={0: torch.eye(8)}, source_layers=[0]), "d_model=8"),
    "another target": ("artifact", dict(metadata={"target_layer": 1}), "targets block 1"),
    "bad n_prompts": ("artifact", dict(n_prompts=-1), "n_prompts a non-negative"),
}


@pytest.mark.bridge
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_artifacts_are_one_line_errors(case, tmp_path, capsys):
    model = make_tiny_model("RMS", backend="bridge")
    kind, content, message = BAD_FILES[case]
    path = tmp_path / "j.pt"
    if kind == "bytes":
        path.write_bytes(content)
    elif kind == "payload":
        torch.save(content, path)
    elif kind == "artifact":
        random_artifact(path, **content)
    with pytest.raises(LensError, match=message) as err:
        TunedLens.from_jacobian_lens(path, model)
    assert "\n" not in str(err.value)
    assert "pwned" not in capsys.readouterr().out


@pytest.mark.bridge
def test_not_a_jacobian_lens_is_a_one_line_error():
    with pytest.raises(LensError, match="expected a JacobianLens or the path"):
        TunedLens.from_jacobian_lens(object(), make_tiny_model("RMS", backend="bridge"))


# --- against TransformerLens 4.x's own JacobianLens --------------------------------------------
@pytest.mark.bridge
@pytest.mark.parametrize("kind", ["LN", "RMS", "gemma2"])
def test_our_readout_of_a_fitted_jlens_equals_transformerlens(kind, JacobianLens):
    model = make_tiny_model(kind, backend="bridge", n_layers=4)
    jl = JacobianLens.fit(model, PROMPTS, corpus="tiny prompts", skip_first_positions=1, dim_batch=16,
                          show_progress=False)
    lens = TunedLens.from_jacobian_lens(jl, model)
    theirs = jl.readout(model, PROMPT, return_full_logits=True)
    _, cache = model.run_with_cache(theirs.tokens[None], names_filter=lens.hook_names)
    ours, logit = lens.logits_from_cache(cache)[:, 0], LogitLens.from_model(model).logits_from_cache(cache)[:, 0]
    assert sorted(theirs.lens_logits) == [0, 1, 2, 3]
    for layer, logits in theirs.lens_logits.items():   # J-lens layer l = our lens layer l + 1
        assert torch.allclose(ours[layer + 1], logits, atol=1e-4)
    assert (ours[1] - logit[1]).abs().max() > 1e-2   # the fitted J is not the identity


@pytest.mark.bridge
def test_transformerlens_loads_what_we_export_and_reads_it_like_we_do(JacobianLens, tmp_path):
    model = make_tiny_model("RMS", backend="bridge", n_layers=4)
    lens = bias_free_lens(model)
    loaded = JacobianLens.load(str(lens.to_jacobian_lens(tmp_path / "ours.pt", dtype=torch.float32)))
    loaded.validate_model(model)
    assert loaded.source_layers == [0, 1, 2] and loaded.metadata["converted_from"] == "tl_tunedlens"
    obj = lens.to_jacobian_lens()
    for layer in (0, 1, 2):
        expected = torch.eye(16) + lens.translators[layer + 1].weight
        assert torch.allclose(loaded.jacobians[layer], expected, atol=1e-6)
        assert torch.equal(obj.jacobians[layer], loaded.jacobians[layer])
    theirs = loaded.readout(model, PROMPT, return_full_logits=True)
    _, cache = model.run_with_cache(theirs.tokens[None], names_filter=lens.hook_names)
    ours = lens.logits_from_cache(cache)[:, 0]
    assert all(torch.allclose(ours[l + 1], theirs.lens_logits[l], atol=1e-4) for l in theirs.lens_logits)
    back = TunedLens.from_jacobian_lens(loaded, model)
    for layer in (1, 2, 3):   # lens layer 0 (the embeddings) has no J-lens counterpart
        assert torch.allclose(back.translators[layer].weight, lens.translators[layer].weight, atol=1e-6)


@pytest.mark.bridge
def test_our_interventions_of_an_imported_jlens_equal_transformerlens(JacobianLens):
    model = make_tiny_model("RMS", backend="bridge", n_layers=4)
    gen = torch.Generator().manual_seed(0)
    jl = JacobianLens({l: torch.eye(16) + 0.3 * torch.randn(16, 16, generator=gen) for l in range(3)},
                      n_prompts=1, d_model=16)
    lens = TunedLens.from_jacobian_lens(jl, model)
    tokens = model.to_tokens(PROMPT)
    _, clean = model.run_with_cache(tokens)
    assert torch.allclose(lens.lens_vectors(model, ["t5", 9], 2), jl.lens_vectors(model, ["t5", 9], 1), atol=1e-5)
    pairs = {
        "steer": (jl.steering_hooks(model, 7, [0, 2], alpha=2.0, positions=[1, -1]),
                  lens.steering_hooks(model, 7, [1, 3], alpha=2.0, positions=[1, -1])),
        "ablate": (jl.ablation_hooks(model, 5, [1]), lens.token_ablation_hooks(model, 5, [2])),
        "swap": (jl.swap_hooks(model, 5, 9, [0, 1], alpha=2.0), lens.swap_hooks(model, 5, 9, [1, 2], alpha=2.0)),
    }
    if "clamp_to" in inspect.signature(jl.swap_hooks).parameters:   # TL 4.3; 3.9 removed several tokens one by one
        pairs["clamp"] = (jl.swap_hooks(model, 5, 9, [0, 1], clamp_to=clean, positions=[-1]),
                          lens.swap_hooks(model, 5, 9, [1, 2], clamp_to=clean, positions=[-1]))
        pairs["ablate several"] = (jl.ablation_hooks(model, [5, 9, 11], [1]),
                                   lens.token_ablation_hooks(model, [5, 9, 11], [2]))
    else:
        pairs["clamp"] = (jl.swap_clamp_hooks(model, 5, 9, [0, 1], clean, positions=[-1]),
                          lens.swap_hooks(model, 5, 9, [1, 2], clamp_to=clean, positions=[-1]))
    plain = model(tokens)
    for name, (theirs, ours) in pairs.items():
        expected, got = model.run_with_hooks(tokens, fwd_hooks=theirs), model.run_with_hooks(tokens, fwd_hooks=ours)
        assert (expected - plain).abs().max() > 1e-2, name
        assert torch.allclose(got, expected, atol=1e-4), name


# --- the real SmolLM2-135M as a raw Bridge ------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_raw():
    from tl_tunedlens import load_model

    return load_model("smollm2-135m", backend="bridge", compatibility_mode=False)


@pytest.mark.integration
@pytest.mark.bridge
def test_smollm2_readout_of_an_imported_jlens_equals_transformerlens(smollm2_raw, JacobianLens):
    model, d = smollm2_raw, smollm2_raw.cfg.d_model
    gen = torch.Generator().manual_seed(0)
    jl = JacobianLens({l: torch.eye(d) + torch.randn(d, d, generator=gen) / d**0.5 for l in (5, 20)},
                      n_prompts=1, d_model=d)
    lens = TunedLens.from_jacobian_lens(jl, model)
    theirs = jl.readout(model, "The capital of France is", return_full_logits=True)
    _, cache = model.run_with_cache(theirs.tokens[None], names_filter=lens.hook_names)
    for layer in (5, 20):
        assert torch.allclose(lens(cache[lens.hook_names[layer + 1]][0], layer + 1), theirs.lens_logits[layer],
                              atol=1e-4, rtol=0)


@pytest.mark.integration
@pytest.mark.bridge
def test_smollm2_steering_toward_a_token_raises_its_log_prob_monotonically(smollm2_raw):
    model = smollm2_raw
    lens = LogitLens.from_model(model)
    tokens = model.to_tokens("I went to the market and bought some")
    target = model.to_single_token(" cheese")
    log_probs = [model.run_with_hooks(tokens, fwd_hooks=lens.steering_hooks(model, target, [20], alpha=alpha,
                                                                              positions=[-1]))
                 [0, -1].log_softmax(-1)[target].item() for alpha in (0.0, 0.25, 0.5, 1.0)]
    assert all(a < b for a, b in zip(log_probs, log_probs[1:])), log_probs
    assert log_probs[-1] - log_probs[0] > 1.0
