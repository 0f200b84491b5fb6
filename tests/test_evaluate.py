"""Evaluation: numbers equal a hand computation, schema, determinism, bits per byte."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import BACKENDS, make_tiny_model
from tl_tunedlens import LensError, TunedLens
from tl_tunedlens.analysis import evaluate_lenses, mean_kl
from tl_tunedlens.analysis.tables import metrics_table


@pytest.fixture(scope="module", params=BACKENDS)
def setup(request):
    model = make_tiny_model("LN", n_layers=2, d_model=16, d_vocab=37, backend=request.param)
    lens = TunedLens.from_model(model)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    seqs = torch.randint(0, 37, (3, 9), generator=gen)
    return model, lens, seqs


@torch.no_grad()
def _by_hand(model, lens, seqs):
    logits, cache = model.run_with_cache(seqs)
    final = logits[:, :-1].log_softmax(-1)
    labels = seqs[:, 1:]
    cap = model.cfg.output_logits_soft_cap
    out = {}
    for name, transform in [("logit", lambda h, i: h), ("tuned", lambda h, i: h + lens.translators[i](h))]:
        rows = []
        for i in range(2):
            h = cache[lens.hook_names[i]][:, :-1]
            z = model.unembed(model.ln_final(transform(h, i)))
            lq = (cap * torch.tanh(z / cap) if cap > 0 else z).log_softmax(-1)
            rows.append({
                "kl": float((final.exp() * (final - lq)).sum(-1).mean()),
                "ce": float(-lq.gather(-1, labels[..., None]).mean()),
                "entropy": float(-(lq.exp() * lq).sum(-1).mean()),
                "top1": float((lq.argmax(-1) == final.argmax(-1)).float().mean()),
            })
        out[name] = rows
    base = {"ce": float(-final.gather(-1, labels[..., None]).mean()), "entropy": float(-(final.exp() * final).sum(-1).mean())}
    return out, base


@pytest.fixture(scope="module")
def softcapped(setup):
    """The same lens weights on a soft-capped RMSNorm model: evaluation takes the autograd products."""
    model = make_tiny_model("RMS", n_layers=2, d_model=16, d_vocab=37, output_logits_soft_cap=3.0)
    lens = TunedLens.from_model(model)
    lens.load_state_dict(setup[1].state_dict())
    assert lens.unembed.softcapped and not lens.unembed.fusable
    return model, lens, setup[2]


@pytest.mark.parametrize("which", ["fused", "softcapped", "row-blocks"])
def test_numbers_equal_hand_computation(which, setup, request, monkeypatch):
    if which == "row-blocks":  # logits processed 2 rows at a time after each product
        import tl_tunedlens.core.vocab as vocab

        monkeypatch.setattr(vocab, "BLOCK_BYTES", 4 * 37 * 2)
    model, lens, seqs = request.getfixturevalue("softcapped") if which == "softcapped" else setup
    metrics = evaluate_lenses(model, seqs, tuned=lens, bytes_per_token=2.0, chunk_tokens=5, micro_batch=2)
    hand, base = _by_hand(model, lens, seqs)
    assert metrics["tokens"] == 3 * 8
    assert metrics["baseline"]["ce"] == pytest.approx(base["ce"], rel=1e-5)
    assert metrics["baseline"]["entropy"] == pytest.approx(base["entropy"], rel=1e-5)
    for name in ("logit", "tuned"):
        for i in range(2):
            for key, value in hand[name][i].items():
                assert metrics["layers"][i][name][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (name, i, key)
            bpb = metrics["layers"][i][name]["bits_per_byte"]
            assert bpb["kl"] == pytest.approx(hand[name][i]["kl"] / 2.0 / math.log(2), rel=1e-4, abs=1e-6)
            assert set(bpb) == {"kl", "ce", "entropy"}


def test_bf16_products_report_their_measured_kl_error(setup):
    model, lens, seqs = setup
    exact = evaluate_lenses(model, seqs, tuned=lens, chunk_tokens=8)
    low = evaluate_lenses(model, seqs, tuned=lens, chunk_tokens=8, matmul_dtype=torch.bfloat16)
    assert "precision" not in exact and low["tokens"] == exact["tokens"]
    check = low["precision"]
    assert check["matmul_dtype"] == "bfloat16" and check["checked_tokens"] == 8
    assert 0 < check["max_kl_error"] < 0.05
    # the error reported is the first chunk's; over all chunks it is of the same size
    whole = max(abs(low["layers"][i][n]["kl"] - exact["layers"][i][n]["kl"]) for i in range(2) for n in ("logit", "tuned"))
    assert 0 < whole < 5 * check["max_kl_error"]
    assert (low["baseline"]["ce"], low["baseline"]["entropy"]) == (exact["baseline"]["ce"], exact["baseline"]["entropy"])


def test_schema_final_layer_and_logit_only(setup):
    model, lens, seqs = setup
    metrics = evaluate_lenses(model, seqs, bytes_per_token=3.0)
    assert set(metrics) == {"model", "tokens", "bytes_per_token", "baseline", "layers"}
    assert set(metrics["baseline"]) == {"ce", "entropy", "bits_per_byte"}
    assert [e["layer"] for e in metrics["layers"]] == [0, 1, 2]
    assert [e["hook"] for e in metrics["layers"]] == lens.hook_names
    assert all("tuned" not in e for e in metrics["layers"])
    last = metrics["layers"][-1]["logit"]
    assert last["kl"] == 0.0 and last["top1"] == 1.0 and last["ce"] == metrics["baseline"]["ce"]
    assert set(metrics["layers"][0]["logit"]) == {"kl", "ce", "entropy", "top1", "bits_per_byte"}


def test_deterministic_and_max_tokens(setup):
    model, lens, seqs = setup
    a = evaluate_lenses(model, seqs, tuned=lens, bytes_per_token=1.0, max_tokens=10)
    b = evaluate_lenses(model, seqs, tuned=lens, bytes_per_token=1.0, max_tokens=10)
    assert a == b and a["tokens"] == 16     # whole sequences, in order: 2 x 8 positions
    first_two = evaluate_lenses(model, seqs[:2], tuned=lens, bytes_per_token=1.0)
    assert first_two == a


def test_table_and_mean_kl(setup):
    model, lens, seqs = setup
    metrics = evaluate_lenses(model, seqs, tuned=lens, bytes_per_token=1.0)
    table = metrics_table(metrics)
    assert "tuned KL" in table and "logit top1" in table and "blocks.0.hook_resid_pre" in table
    assert mean_kl(metrics, "tuned") == pytest.approx((metrics["layers"][0]["tuned"]["kl"] + metrics["layers"][1]["tuned"]["kl"]) / 2)


def test_bad_sequences(setup):
    model, lens, _ = setup
    with pytest.raises(LensError, match="seq_len >= 2"):
        evaluate_lenses(model, torch.zeros(2, 1, dtype=torch.long))
