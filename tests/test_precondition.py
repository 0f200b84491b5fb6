"""Whitened KL steps: the input moments from the least-squares sums, the whitened gradient, a trained
lens that improves on its least-squares start, and the option's checks."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_model
from tl_tunedlens import LensError, TunedLens
from tl_tunedlens.training import TrainConfig, train_lens
from tl_tunedlens.training.lstsq import RidgeStats
from tl_tunedlens.training.precondition import Whitener, input_moments


def _stats(bias: bool, n=300, d=8, layers=2):
    gen = torch.Generator().manual_seed(0)
    x = 5.0 * torch.randn(layers, n, d, generator=gen) + 3.0
    stats = RidgeStats(list(range(layers)), d, centre=bias)
    stats.update(x[:, :100], x[0, :100])   # in pieces, with the first piece's shift
    stats.update(x[:, 100:], x[0, 100:])
    return stats, x.double()


@pytest.mark.parametrize("bias", [True, False])
def test_input_moments_equal_the_direct_second_moment(bias):
    stats, x = _stats(bias)
    if bias:
        x = torch.cat([x, torch.ones(*x.shape[:2], 1, dtype=x.dtype)], -1)
    direct = x.transpose(1, 2) @ x / x.shape[1]
    torch.testing.assert_close(input_moments(stats, bias), direct, rtol=1e-5, atol=1e-5)  # fp32 products


def test_whitened_gradient_is_the_gradient_times_the_damped_inverse():
    model = make_tiny_model("RMS", n_layers=2, d_model=8, d_vocab=11)
    lens = TunedLens.from_model(model)
    stats, x = _stats(True)
    whitener = Whitener.from_stats(stats, damping=1e-2)
    moments = input_moments(stats)
    damped = moments + 1e-2 * moments.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None] / 9 * torch.eye(9)
    grads = []
    for t in lens.translators:
        t.weight.grad, t.bias.grad = torch.randn_like(t.weight), torch.randn_like(t.bias)
        grads.append(torch.cat([t.weight.grad, t.bias.grad[:, None]], 1).double())
    whitener.apply_(lens)
    for layer, t in enumerate(lens.translators):
        got = torch.cat([t.weight.grad, t.bias.grad[:, None]], 1).double()
        torch.testing.assert_close(got @ damped[layer], grads[layer], rtol=1e-4, atol=1e-4)


def test_whitened_steps_improve_on_the_least_squares_start():
    model = make_tiny_model("RMS", n_layers=3, d_model=16, d_vocab=37)
    seqs = torch.randint(0, 37, (40, 16), generator=torch.Generator().manual_seed(0))
    cfg = dict(tokens_per_step=128, lstsq_tokens=128, checkpoint_every=0, matmul_dtype="float32")
    start = train_lens(model, TunedLens.from_model(model), seqs, TrainConfig(steps=1, lr=1e-12, **cfg), progress=False)
    res = train_lens(model, TunedLens.from_model(model), seqs, TrainConfig(steps=6, optimizer="whitened", **cfg),
                     progress=False)
    assert res.losses[0] == pytest.approx(start.losses[0], rel=1e-6)   # the same start and first batch
    assert res.losses[-1] < 0.9 * res.losses[0]


def test_whitened_needs_the_least_squares_start():
    with pytest.raises(LensError, match="init lstsq"):
        TrainConfig(optimizer="whitened", init="identity")
