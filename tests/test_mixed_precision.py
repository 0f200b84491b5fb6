"""Mixed-precision training: bf16 vocabulary matmuls, fp32 translators / softmax / loss."""

from __future__ import annotations

import pytest
import torch

from conftest import BACKENDS, make_tiny_model, random_tuned_lens
from tl_tunedlens import LensError, TunedLens
from tl_tunedlens.core.backend import capture_residuals
from tl_tunedlens.training import TrainConfig, train_lens
from tl_tunedlens.training.loss import accumulate_lens_grads


def _grads(lens, resids, layers, matmul_dtype, labels=None):
    lens.zero_grad(set_to_none=True)
    lens.requires_grad_(True)
    sums = accumulate_lens_grads(lens, resids, layers, labels=labels, scale=1.0 / resids.shape[1],
                                 chunk_tokens=40, matmul_dtype=matmul_dtype)
    grads = [p.grad.clone() for p in lens.parameters()]
    lens.requires_grad_(False)
    return sums, grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", ["LN", "RMS"])
@pytest.mark.parametrize("loss", ["kl", "ce"])
def test_bf16_gradients_close_to_fp32(norm, loss, backend):
    """Relative error of each translator's gradient (Frobenius norm of the difference over the norm of
    the fp32 gradient). bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2%) on the lens
    input, W_U, the logits and the gradient w.r.t. the logits; errors are independent across the
    ~d_vocab terms of the backward sum and across tokens, so the gradient error stays at a few
    times 2^-9. Measured (this model, 93-96 tokens): 0.09-0.30% over layers, parameters, LN/RMS and
    KL/CE (worst 0.30%, CE); bound 2%, ~7x the worst case, still far below what would bias training."""
    model = make_tiny_model(norm, n_layers=3, d_model=32, d_vocab=512, n_ctx=64, backend=backend)
    lens = random_tuned_lens(model)
    tokens = torch.randint(0, 512, (3, 32), generator=torch.Generator().manual_seed(0))
    resids = capture_residuals(model, tokens, lens.hook_names)
    labels = None
    if loss == "ce":
        resids, labels = resids[:, :, :-1], tokens[:, 1:].flatten()
    resids = resids.flatten(1, 2)
    sums32, g32 = _grads(lens, resids, [0, 1, 2], None, labels)
    sums16, g16 = _grads(lens, resids, [0, 1, 2], torch.bfloat16, labels)
    rel = [((a - b).norm() / b.norm()).item() for a, b in zip(g16, g32)]
    assert max(rel) < 0.02, rel
    # per-layer loss sums: measured relative differences <= 8e-5
    torch.testing.assert_close(sums16, sums32, rtol=1e-3, atol=1e-4)


def test_default_logits_unchanged_and_bf16_logits_close():
    model = make_tiny_model("RMS", d_model=32, d_vocab=512)
    lens = random_tuned_lens(model)
    h = torch.randn(5, 32, generator=torch.Generator().manual_seed(1))
    ref = model.unembed(model.ln_final(lens.transform(h, 1)))
    assert torch.equal(lens(h, 1), ref)
    assert torch.equal(lens.unembed(lens.transform(h, 1), None), ref)
    low = lens.unembed(lens.transform(h, 1), torch.bfloat16)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0.02, atol=0.02 * ref.abs().max().item())
    assert torch.equal(lens(h, 1), ref)  # the fp32 cache is untouched by the bf16 one


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_training_lowers_the_loss_and_is_recorded(backend):
    model = make_tiny_model("LN", n_layers=3, d_model=32, d_vocab=128, n_ctx=32, backend=backend)
    seqs = torch.randint(0, 128, (32, 16), generator=torch.Generator().manual_seed(0))
    lens = TunedLens.from_model(model)
    cfg = TrainConfig.preset("paper", steps=15, tokens_per_step=64, optimizer="adam", lr=1e-2, checkpoint_every=0,
                             matmul_dtype="bfloat16", chunk_tokens=32)
    result = train_lens(model, lens, seqs, cfg, progress=False)
    assert result.losses[-1] < 0.7 * result.losses[0]
    assert result.info["matmul_dtype"] == "bfloat16"
    assert all(p.dtype == torch.float32 for p in lens.parameters())
    assert "training" not in lens.unembed._transposed  # the bf16 copy of W_U is dropped after training


def test_bad_matmul_dtype_is_a_clear_error():
    model = make_tiny_model("LN")
    seqs = torch.randint(0, 37, (4, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(LensError, match="matmul dtype 'float16'.*float32, bfloat16"):
        train_lens(model, TunedLens.from_model(model), seqs,
                   TrainConfig(steps=1, tokens_per_step=8, matmul_dtype="float16"), progress=False)


def test_cli_flag():
    import argparse

    from tl_tunedlens.cli.train import register, train_config_from_args

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "--out", "x", "--matmul-dtype", "bfloat16"])
    assert train_config_from_args(args).matmul_dtype == "bfloat16"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--out", "x", "--matmul-dtype", "float16"])
