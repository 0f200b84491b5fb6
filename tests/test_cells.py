"""The fused per-cell statistics (:mod:`tl_tunedlens.analysis.cells`, one softmax pass per row block of
logits, no log-probs written) against the textbook ones (:mod:`tl_tunedlens.analysis.stats`) on full log-probs."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_model, random_tuned_lens
from tl_tunedlens import LogitLens
from tl_tunedlens.analysis import stats
from tl_tunedlens.analysis import cells
from tl_tunedlens.analysis.cells import Cancelled, row_order, stream_rows
from tl_tunedlens.analysis.stream import run_once
from tl_tunedlens.analysis.trajectory import next_token_targets
from tl_tunedlens.core import vocab

TOKENS = torch.tensor([[3, 14, 15, 9, 26, 5, 35, 8, 9, 7]])  # ids below every tiny model's vocabulary (37)


def _setup(model):
    lenses = [LogitLens.from_model(model), random_tuned_lens(model, seed=4)]
    return model, lenses, run_once(model, lenses, TOKENS)


@pytest.fixture(scope="module")
def setup():
    return _setup(make_tiny_model("RMS", n_layers=3, d_vocab=50))


@pytest.fixture
def every_setup(tiny_model):
    """GPT-2, Llama and Gemma-2 (soft-capped: the autograd products) types on both backends."""
    return _setup(tiny_model)


@pytest.mark.parametrize("block_bytes, product_rows", [(vocab.BLOCK_BYTES, 256), (4 * 50 * 3, 1), (4 * 50 * 3, 40)])
def test_rows_equal_the_textbook_statistics(every_setup, monkeypatch, block_bytes, product_rows):
    """One product and one row block; a product per layer, blocks of a few rows; several layers per product."""
    monkeypatch.setattr(vocab, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(cells, "PRODUCT_ROWS", product_rows)
    model, lenses, run = every_setup
    targets = next_token_targets(TOKENS)
    rows = list(stream_rows(run, lenses, targets, top_k=4, watch=[7, 11]))
    n = run.n_layers
    assert [r.layer for r in rows] == [n, n] + [l for l in range(n) for _ in lenses] + [n, n]
    seen = {}
    for r in rows:
        seen[(r.lens, r.layer)] = r
        lp = run.log_probs(lenses[r.lens], r.layer)
        close = dict(atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(r.kl, stats.kl_divergence(run.final, lp), **close)
        torch.testing.assert_close(r.entropy, stats.entropy(lp), **close)
        torch.testing.assert_close(r.target_log_prob, stats.target_log_prob(lp, targets), equal_nan=True, **close)
        assert torch.equal(r.target_rank, stats.target_rank(lp, targets))
        values, indices = lp.topk(4, dim=-1)
        torch.testing.assert_close(r.top_log_probs, values, **close)
        assert torch.equal(r.top_indices, indices)
        torch.testing.assert_close(r.watched_log_probs, lp[..., [7, 11]], **close)
        for j, t in enumerate([7, 11]):
            assert torch.equal(r.watched_ranks[..., j], stats.target_rank(lp, torch.full_like(targets, t)))
        if r.layer == 0 or (r.layer == n and r.kl_step is None):
            assert r.kl_step is None
        else:
            below = run.log_probs(lenses[r.lens], r.layer - 1)
            torch.testing.assert_close(r.kl_step, stats.kl_divergence(lp, below), **close)
    assert row_order(n) == [n, 0, 1, 2]


def test_rows_can_be_cancelled_between_layers(setup, monkeypatch):
    monkeypatch.setattr(cells, "PRODUCT_ROWS", 1)  # one layer per product
    model, lenses, run = setup
    asked = []

    def cancelled():
        asked.append(1)
        return len(asked) > 1

    rows = stream_rows(run, lenses, next_token_targets(TOKENS), top_k=2, cancelled=cancelled)
    got = []
    with pytest.raises(Cancelled, match="newer request"):
        for r in rows:
            got.append(r.layer)
    assert got == [3, 3, 0, 0]
