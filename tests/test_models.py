"""Model loading: fail-fast errors (unit) and the real offline SmolLM2-135M (integration)."""

from __future__ import annotations

import pytest
import torch

from test_hub import connections  # noqa: F401  (fixture)
from tl_tunedlens import LogitLens, ModelLoadError, TunedLens, load_model
from tl_tunedlens.artifacts.hub import REACH_TIMEOUT_S, hub_reachable

SENTENCE = "The capital of France is Paris, and the capital of Germany is Berlin. The capital of Italy is"


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-model': use 'smollm2-135m'"):
        load_model("no-such-model")


def test_bad_dtype_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="dtype must be"):
        load_model("smollm2-135m", dtype="float13")


@pytest.mark.skipif(hub_reachable(), reason="needs a machine without access to the hub")
def test_hub_model_without_network_fails_fast(monkeypatch, connections):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelLoadError, match="hub is unreachable.*HF_HUB_OFFLINE=1.*smollm2-135m"):
        load_model("gpt2")
    assert len(connections) <= 1 and all(t is not None and t <= REACH_TIMEOUT_S for _, t in connections)


def test_hub_model_offline_and_not_cached_fails_fast(monkeypatch, tmp_path, connections):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE=1.*not in the local Hugging Face cache"):
        load_model("gpt2")
    assert connections == []


# --- the real model ----------------------------------------------------------------------------


@pytest.mark.integration
def test_smollm2_matches_hugging_face(smollm2):
    from tl_tunedlens.models.embedded import load_hf_smollm2

    hf_model, tokenizer = load_hf_smollm2()
    ids = torch.tensor([tokenizer.encode(SENTENCE)])
    assert ids[0, 0] != tokenizer.bos_token_id  # no BOS is added by the GGUF tokenizer
    with torch.no_grad():
        ours = smollm2(ids).log_softmax(-1)
        theirs = hf_model(ids).logits.log_softmax(-1)
    diff = (ours - theirs).abs().max().item()
    print(f"\nSmolLM2-135M log-prob parity, TransformerLens vs Hugging Face: max |diff| = {diff:.2e} nats")
    assert diff < 1e-4
    assert ours[0, -1].argmax() == theirs[0, -1].argmax()
    unprocessed = load_model("smollm2-135m", fold_ln=False, center_writing_weights=False, center_unembed=False)
    with torch.no_grad():
        raw = unprocessed(ids).log_softmax(-1)
    print(f"unprocessed (no fold_ln): max |diff| = {(raw - theirs).abs().max().item():.2e} nats")
    assert (raw - theirs).abs().max() < 1e-4
    TunedLens.from_model(smollm2).check_model(unprocessed)  # same unembedding function


@pytest.mark.integration
def test_smollm2_config_and_tokenizer(smollm2):
    cfg = smollm2.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_vocab, cfg.normalization_type) == (30, 576, 9, 49152, "RMSPre")
    assert smollm2.to_tokens(" Paris").tolist() == [[7042]]  # no BOS prepended by default
    ids = smollm2.tokenizer.encode(" Paris, France", add_special_tokens=False)
    assert smollm2.tokenizer.decode(ids) == " Paris, France"
    assert not any(p.requires_grad for p in smollm2.parameters())


@pytest.mark.integration
def test_logit_lens_kl_is_large_in_the_middle_and_small_at_the_end(smollm2):
    lens = LogitLens.from_model(smollm2)
    ids = smollm2.to_tokens(SENTENCE)
    with torch.no_grad():
        logits, cache = smollm2.run_with_cache(ids, names_filter=lens.hook_names)
        log_probs = lens.log_probs_from_cache(cache)
    final = log_probs[-1]
    kl = (final.exp() * (final - log_probs)).sum(-1).mean(dim=(1, 2))  # [layer], nats
    print("\nlogit-lens KL(final || lens) per layer, nats:", " ".join(f"{i}:{v:.2f}" for i, v in enumerate(kl.tolist())))
    n = smollm2.cfg.n_layers
    assert kl[-1].abs() < 1e-6
    assert kl[n // 3 : 2 * n // 3].min() > 5.0
    assert kl[n - 1] < 3.0 and kl[n - 2 : n].max() < kl[n // 3 : 2 * n // 3].min() / 2
    assert torch.equal(log_probs[-1], logits.log_softmax(-1))


# --- the real model as a TransformerBridge ------------------------------------------------------


@pytest.mark.integration
@pytest.mark.bridge
def test_smollm2_bridge_config_and_predictions(smollm2_bridge):
    from tl_tunedlens.core.backend import model_facts
    from tl_tunedlens.models.embedded import smollm2_hf_model

    facts = model_facts(smollm2_bridge)
    assert (facts.backend, facts.n_layers, facts.d_model, facts.d_vocab) == ("bridge", 30, 576, 49152)
    assert facts.normalization_type == "RMSPre" and facts.model_name == "SmolLM2-135M-Instruct"  # folded
    assert smollm2_bridge.cfg.n_ctx == 2048 and smollm2_bridge.to_tokens(" Paris").tolist() == [[7042]]  # no BOS
    assert not any(p.requires_grad for p in smollm2_bridge.parameters())
    hf_model, tokenizer, _ = smollm2_hf_model()
    ids = torch.tensor([tokenizer.encode(SENTENCE)])
    with torch.no_grad():
        ours = smollm2_bridge(ids).log_softmax(-1)
        theirs = hf_model(ids).logits.log_softmax(-1)
    diff = (ours - theirs).abs().max().item()
    print(f"\nSmolLM2-135M log-prob parity, TransformerBridge (compatibility mode) vs Hugging Face: {diff:.2e} nats")
    assert diff < 1e-4


@pytest.mark.integration
def test_smollm2_lens_moves_between_backends(smollm2, smollm2_bridge, tmp_path):
    """A lens saved on one backend loads on the other (the same GGUF weights) and predicts the same at
    every layer within 1e-3 nats; the identity checks accept the same model in either form."""
    from conftest import random_tuned_lens

    ids = smollm2.to_tokens(SENTENCE)
    assert torch.equal(ids, smollm2_bridge.to_tokens(SENTENCE))
    worst = {}
    for name, source, target in (("hooked->bridge", smollm2, smollm2_bridge), ("bridge->hooked", smollm2_bridge, smollm2)):
        lens = random_tuned_lens(source, scale=0.02)
        lens.save(tmp_path / name)
        moved = TunedLens.load(tmp_path / name, target)
        with torch.no_grad():
            _, cache_a = source.run_with_cache(ids, names_filter=lens.hook_names)
            _, cache_b = target.run_with_cache(ids, names_filter=lens.hook_names)
            diff = (lens.log_probs_from_cache(cache_a) - moved.log_probs_from_cache(cache_b)).abs()
        worst[name] = diff.amax(dim=(1, 2, 3))  # [layer], nats
        assert worst[name].max() < 1e-3, (name, worst[name])
        lens.check_model(target)
    print("\nmax |log-prob difference| over layers, nats:", {k: f"{v.max().item():.1e}" for k, v in worst.items()})
