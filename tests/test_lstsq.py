"""Least-squares (ridge) start: exact recovery on synthetic data, and a better start than identity."""

from __future__ import annotations

import pytest
import torch

from conftest import BACKENDS, make_tiny_model
from tl_tunedlens import LensError, TunedLens
from tl_tunedlens.analysis import evaluate_lenses, mean_kl
from tl_tunedlens.training.lstsq import RidgeStats, collect_stats, lstsq_init_, set_translators_, solve_ridge


def _synthetic(d=16, n=400, layers=3, seed=0):
    """Final residual y and per-layer x with y an exact affine function of every x."""
    gen = torch.Generator().manual_seed(seed)
    y = 3.0 * torch.randn(n, d, generator=gen) + 1.0
    xs = []
    for _ in range(layers):
        m = torch.randn(d, d, generator=gen) / d**0.5 + torch.eye(d)
        xs.append(y @ m + torch.randn(d, generator=gen))
    return torch.stack(xs), y


def test_ridge_recovers_exact_affine_relation():
    x, y = _synthetic()
    stats = RidgeStats([0, 1, 2], 16)
    stats.update(x[:, :150], y[:150])
    stats.update(x[:, 150:], y[150:])   # accumulating in pieces = all at once
    assert stats.n == 400
    for i, (w, b) in enumerate(solve_ridge(stats, ridge=0.0)):
        torch.testing.assert_close((x[i].double() @ w.T + b).float(), y, atol=1e-3, rtol=1e-4)


@torch.no_grad()
def test_lens_from_exact_fit_matches_final_distribution():
    model = make_tiny_model("LN", n_layers=3, d_model=16, d_vocab=37)
    lens = TunedLens.from_model(model)
    x, y = _synthetic()
    stats = RidgeStats([0, 1, 2], 16)
    stats.update(x, y)
    set_translators_(lens, [0, 1, 2], solve_ridge(stats, ridge=0.0))
    final = lens.unembed(y).log_softmax(-1)
    for layer in range(3):
        lq = lens.log_probs(x[layer], layer)
        kl = (final.exp() * (final - lq)).sum(-1).mean()
        assert float(kl) < 1e-6
        identity_kl = (final.exp() * (final - TunedLens.from_model(model).log_probs(x[layer], layer))).sum(-1).mean()
        assert float(identity_kl) > 0.01


def test_ridge_without_bias_has_no_intercept():
    x, y = _synthetic()
    x0 = x[0] - x[0].mean(0)            # a linear relation through the origin
    stats = RidgeStats([0], 16, centre=False)
    stats.update(x0[None], y - y.mean(0))
    ((w, b),) = solve_ridge(stats, ridge=0.0, bias=False)
    assert torch.equal(b, torch.zeros(16, dtype=torch.float64))
    torch.testing.assert_close((x0.double() @ w.T).float(), y - y.mean(0), atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", ["LN", "RMS"])
@pytest.mark.parametrize("bias", [True, False])
def test_lstsq_start_beats_identity_on_a_tiny_model(norm, bias, backend):
    model = make_tiny_model(norm, n_layers=3, d_model=16, d_vocab=37, backend=backend)
    seqs = torch.randint(0, 37, (40, 16), generator=torch.Generator().manual_seed(0))
    lens = TunedLens.from_model(model, bias=bias)
    info = lstsq_init_(lens, model, seqs[:32], ridge=1e-4, micro_batch=8)
    assert info["lstsq_tokens"] == 32 * 16
    metrics = evaluate_lenses(model, seqs[32:], tuned=lens, bytes_per_token=1.0)
    assert mean_kl(metrics, "tuned") < mean_kl(metrics, "logit")


def test_stats_hold_only_d_model_sized_sums():
    model = make_tiny_model("RMS", n_layers=2, d_model=16, d_vocab=37)
    lens = TunedLens.from_model(model)
    stats = collect_stats(model, lens, torch.randint(0, 37, (2, 8)))
    assert stats.sxx.shape == (2, 16, 16) and stats.sxy.shape == (2, 16, 16) and stats.n == 16


def test_shifted_sums_do_not_lose_precision_with_a_large_mean():
    x, y = _synthetic()
    stats = RidgeStats([0, 1, 2], 16)
    for i in range(0, 400, 50):
        stats.update(x[:, i:i + 50] + 1e4, y[i:i + 50])
    for i, (w, b) in enumerate(solve_ridge(stats, ridge=0.0)):
        torch.testing.assert_close((((x[i] + 1e4).double() @ w.T) + b).float(), y, atol=2e-2, rtol=1e-3)


def test_too_few_tokens():
    stats = RidgeStats([0], 4)
    stats.update(torch.ones(1, 1, 4), torch.ones(1, 4))
    with pytest.raises(LensError, match="at least 2 tokens"):
        solve_ridge(stats)
