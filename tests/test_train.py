"""Trainer: exact loss and gradient, optimisation, micro-batches, resume bit for bit, divergence."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import BACKENDS, make_tiny_model, random_tuned_lens
from tl_tunedlens import LensError, TunedLens
from tl_tunedlens.artifacts.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tl_tunedlens.training.optim import lr_factor, make_optimizer
from tl_tunedlens.core.backend import capture_residuals
from tl_tunedlens.training import TrainConfig, TrainingDivergedError, train_lens
from tl_tunedlens.training.loss import accumulate_lens_grads
from tl_tunedlens.training.order import step_sequences


def paper(**overrides) -> TrainConfig:
    """The paper's settings (identity start, SGD-Nesterov), which these tests were written for."""
    return TrainConfig.preset("paper", **overrides)


@pytest.fixture(scope="module", params=BACKENDS)
def model(request):
    return make_tiny_model("RMS", n_layers=3, d_model=16, d_vocab=37, backend=request.param)


@pytest.fixture(scope="module")
def seqs():
    return torch.randint(0, 37, (24, 16), generator=torch.Generator().manual_seed(0))


def _direct(lens, resids, layers, labels=None):
    """Mean loss per layer by plain autograd through log_softmax."""
    final = lens.unembed(resids[-1]).log_softmax(-1)
    out = []
    for layer in layers:
        lq = lens(resids[layer], layer).log_softmax(-1)
        if labels is None:
            out.append((final.exp() * (final - lq)).sum(-1).mean())
        else:
            out.append(torch.nn.functional.cross_entropy(lq, labels))
    return torch.stack(out)


@pytest.mark.parametrize("rows", [None, 2], ids=["one-block", "row-blocks"])
@pytest.mark.parametrize("loss", ["kl", "ce"])
def test_loss_and_gradient_equal_direct_computation(tiny_model, tiny_tokens, loss, rows, monkeypatch):
    if rows is not None:  # the softmax-side passes take 2 rows of each 7-token chunk at a time
        import tl_tunedlens.core.vocab as vocab

        monkeypatch.setattr(vocab, "BLOCK_BYTES", 4 * tiny_model.cfg.d_vocab * rows)
    lens = random_tuned_lens(tiny_model)
    resids = capture_residuals(tiny_model, tiny_tokens, lens.hook_names)
    labels = None
    if loss == "ce":
        resids, labels = resids[:, :, :-1], tiny_tokens[:, 1:].flatten()
    resids = resids.flatten(1, 2)
    n, layers = resids.shape[1], [0, 1, 2]
    lens.requires_grad_(True)
    sums = accumulate_lens_grads(lens, resids, layers, labels=labels, scale=1.0 / n, chunk_tokens=7)
    ours = [p.grad.clone() for p in lens.parameters()]
    lens.zero_grad(set_to_none=True)
    direct = _direct(lens, resids, layers, labels)
    direct.sum().backward()
    torch.testing.assert_close(sums.float() / n, direct.detach(), rtol=1e-5, atol=1e-6)
    for a, p in zip(ours, lens.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


def test_kl_of_identity_lens_at_final_layer_is_zero(model, seqs):
    lens = TunedLens.from_model(model)
    resids = capture_residuals(model, seqs[:2], lens.hook_names).flatten(1, 2)
    final = lens.unembed(resids[-1]).log_softmax(-1)
    direct = (final.exp() * (final - lens(resids[0], 0).log_softmax(-1))).sum(-1).sum()
    sums = accumulate_lens_grads(lens.requires_grad_(True), resids, [0])
    assert float(sums[0]) == pytest.approx(float(direct.detach()), rel=1e-5, abs=1e-6)  # a KL near 0: fp32 rounding


def test_loss_decreases(model, seqs):
    lens = TunedLens.from_model(model)
    res = train_lens(model, lens, seqs, paper(steps=25, tokens_per_step=64, checkpoint_every=0), progress=False)
    assert res.losses[-1] < 0.8 * res.losses[0]
    assert res.tokens_seen == 25 * 64 and res.info["tokens_seen"] == 25 * 64
    assert all(not p.requires_grad for p in lens.parameters())


def test_adam_and_ce_train(model, seqs):
    lens = TunedLens.from_model(model)
    res = train_lens(model, lens, seqs, paper(steps=15, tokens_per_step=64, optimizer="adam", lr=1e-2, validation_tokens=64,
                                                    loss="ce", checkpoint_every=0), progress=False)
    assert sum(res.losses[-5:]) < sum(res.losses[:5])   # each step's loss is on other sequences: compare means
    assert res.info["validation"]["best_kl"] < res.info["validation"]["start_kl"]
    assert res.info["tokens_per_step"] == 4 * 15   # ce scores seq_len - 1 positions per sequence


def test_micro_batches_accumulate_to_the_full_batch(model, seqs):
    results = []
    for micro in (1, 4):
        lens = TunedLens.from_model(model)
        train_lens(model, lens, seqs, paper(steps=3, tokens_per_step=64, micro_batch=micro,
                                                  checkpoint_every=0), progress=False)
        results.append(lens.state_dict())
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-4, atol=1e-6)


def test_only_chosen_layers_change(model, seqs):
    lens = TunedLens.from_model(model)
    train_lens(model, lens, seqs, paper(steps=2, tokens_per_step=32, layers=[1], checkpoint_every=0),
               progress=False)
    assert lens.translators[0].weight.abs().sum() == 0 and lens.translators[2].weight.abs().sum() == 0
    assert lens.translators[1].weight.abs().sum() > 0


@pytest.mark.parametrize("optimizer, lr", [("sgd", 1.0), ("whitened", 20.0), ("muon", 0.02),
                                           ("adam", 0.5)])   # adam at 0.5: steps rejected, learning rates halved
def test_resume_is_bit_exact(model, seqs, tmp_path, monkeypatch, optimizer, lr):
    cfg = dict(steps=6, tokens_per_step=32, micro_batch=1, checkpoint_every=2, init="lstsq", lstsq_tokens=64,
               optimizer=optimizer, lr=lr, validation_tokens=64)
    full = TunedLens.from_model(model)
    full_info = train_lens(model, full, seqs, paper(**cfg), out_dir=tmp_path / "a", progress=False).info

    import tl_tunedlens.training.trainer as train_mod

    calls = {"n": 0}
    real = train_mod.capture_residuals

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3 * 2:   # two micro-batches per step: stop during step 3
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "capture_residuals", interrupting)
    part = TunedLens.from_model(model)
    with pytest.raises(KeyboardInterrupt):
        train_lens(model, part, seqs, paper(**cfg), out_dir=tmp_path / "b", progress=False)
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)["step"] == 2
    monkeypatch.setattr(train_mod, "capture_residuals", real)
    resumed = TunedLens.from_model(model)
    res = train_lens(model, resumed, seqs, paper(**cfg), out_dir=tmp_path / "b", resume=True, progress=False)
    assert len(res.losses) == 6 and res.info["validation"] == full_info["validation"]
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_resume_refuses_other_options(model, seqs, tmp_path):
    cfg = dict(steps=2, tokens_per_step=32, checkpoint_every=1)
    train_lens(model, TunedLens.from_model(model), seqs, paper(**cfg), out_dir=tmp_path, progress=False)
    with pytest.raises(LensError, match="steps=2, now 3"):
        train_lens(model, TunedLens.from_model(model), seqs, paper(**{**cfg, "steps": 3}), out_dir=tmp_path,
                   resume=True, progress=False)
    with pytest.raises(LensError, match="other data"):
        train_lens(model, TunedLens.from_model(model), seqs[:8], paper(**cfg), out_dir=tmp_path,
                   resume=True, progress=False)
    with pytest.raises(LensError, match="no checkpoint"):
        train_lens(model, TunedLens.from_model(model), seqs, paper(**cfg), out_dir=tmp_path / "x",
                   resume=True, progress=False)


def test_non_finite_stops_with_layer_and_step_and_keeps_checkpoint(model, seqs, tmp_path, monkeypatch):
    import tl_tunedlens.training.trainer as train_mod

    real = train_mod.capture_residuals
    calls = {"n": 0}

    def poisoned(m, tokens, names):
        calls["n"] += 1
        out = real(m, tokens, names)
        if calls["n"] > 3:            # step 3 (one micro-batch per step)
            out[2] = float("nan")
        return out

    monkeypatch.setattr(train_mod, "capture_residuals", poisoned)
    cfg = paper(steps=5, tokens_per_step=32, micro_batch=2, checkpoint_every=2)
    with pytest.raises(TrainingDivergedError, match="layer 2 at step 3") as err:
        train_lens(model, TunedLens.from_model(model), seqs, cfg, out_dir=tmp_path, progress=False)
    assert "\n" not in str(err.value)
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["lens"].values())
    assert not list(tmp_path.glob(".*.tmp"))


def test_exploding_weights_are_caught(model, seqs):
    with pytest.raises(TrainingDivergedError, match="layer . (became|at step)"):
        train_lens(model, TunedLens.from_model(model), seqs,
                   paper(steps=3, tokens_per_step=32, lr=1e39, clip=None, checkpoint_every=0), progress=False)


def test_zero_steps_is_the_least_squares_start_alone(model, seqs):
    """``steps=0`` (the laptop preset's): the lens is exactly the start a run with steps has before its first step."""
    cfg = dict(tokens_per_step=32, lstsq_tokens=64, checkpoint_every=0)
    alone = TunedLens.from_model(model)
    result = train_lens(model, alone, seqs, TrainConfig(steps=0, **cfg), progress=False)
    assert result.losses == [] and result.steps == 0 and result.info["lstsq_tokens"] == 64
    started = {}

    def snapshot(run):
        if run.step == 0:
            started.update({k: v.clone() for k, v in run.lens.state_dict().items()})

    train_lens(model, TunedLens.from_model(model), seqs, TrainConfig(steps=1, **cfg), progress=False, on_step=snapshot)
    for key, value in alone.state_dict().items():
        assert torch.equal(value, started[key]), key
    assert any(p.abs().sum() > 0 for p in alone.translators.parameters())


def test_bad_configs(model, seqs):
    lens = TunedLens.from_model(model)
    for kwargs, pattern in [
        (dict(steps=-1), "at least 0 step"),
        (dict(steps=0), "trains nothing from the identity start"),
        (dict(tokens_per_step=8), "below one sequence"),
        (dict(optimizer="rmsprop"), "unknown optimizer"),
        (dict(loss="mse"), "unknown loss"),
        (dict(init="random"), "unknown init"),
        (dict(steps=3, warmup_steps=3), "warmup"),
    ]:
        with pytest.raises(LensError, match=pattern):
            train_lens(model, lens, seqs, paper(**{"tokens_per_step": 32, **kwargs}), progress=False)
    long = torch.zeros(2, 40, dtype=torch.long)
    with pytest.raises(LensError, match="n_ctx=32"):
        train_lens(model, lens, long, paper(tokens_per_step=80), progress=False)


def test_schedule_and_sgd_convention():
    steps = [lr_factor(s, 10) for s in range(10)]
    assert steps[0] == 1.0 and steps[-1] == pytest.approx(0.1) and all(a > b for a, b in zip(steps, steps[1:]))
    warm = [lr_factor(s, 10, warmup=3) for s in range(10)]
    assert warm[:3] == pytest.approx([0.25, 0.5, 0.75]) and warm[3] == 1.0 and warm[-1] > 0
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(2))], paper(lr=1.0))
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(0.1) and group["nesterov"] and group["momentum"] == 0.9
    assert group["weight_decay"] == 1e-3
    adam = make_optimizer([torch.nn.Parameter(torch.zeros(2))], paper(optimizer="adam", lr=None)).param_groups[0]
    assert adam["lr"] == 1e-3 and adam["amsgrad"]


def test_data_order_is_seeded_and_covers_epochs():
    first = step_sequences(10, 5, 0, seed=0) + step_sequences(10, 5, 1, seed=0)
    assert sorted(first) == list(range(10))
    assert step_sequences(10, 5, 0, seed=0) == step_sequences(10, 5, 0, seed=0)
    assert step_sequences(10, 5, 0, seed=0) != step_sequences(10, 5, 0, seed=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", ["kl", "ce"])
def test_autograd_path_for_a_softcapped_unembedding_equals_direct_computation(tiny_tokens, loss, backend):
    model = make_tiny_model("RMS", output_logits_soft_cap=3.0, backend=backend)  # the fused vocabulary path does not apply
    lens = random_tuned_lens(model)
    assert lens.unembed.softcapped
    resids = capture_residuals(model, tiny_tokens, lens.hook_names)
    labels = None
    if loss == "ce":
        resids, labels = resids[:, :, :-1], tiny_tokens[:, 1:].flatten()
    resids = resids.flatten(1, 2)
    n, layers = resids.shape[1], [0, 2]
    lens.requires_grad_(True)
    sums = accumulate_lens_grads(lens, resids, layers, labels=labels, scale=1.0 / n, chunk_tokens=5)
    ours = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in lens.parameters()]
    lens.zero_grad(set_to_none=True)
    _direct(lens, resids, layers, labels).sum().backward()
    torch.testing.assert_close(sums.float() / n, _direct(lens, resids, layers, labels).detach(), rtol=1e-5, atol=1e-6)
    for a, p in zip(ours, lens.parameters()):
        torch.testing.assert_close(a, p.grad if p.grad is not None else torch.zeros_like(p), rtol=1e-4, atol=1e-6)


# --- Muon, and the validation slice ---------------------------------------------------------
def test_muon_takes_the_2d_weights_and_adamw_the_biases(model, seqs):
    from tl_tunedlens.training.optim import layer_groups

    lens = TunedLens.from_model(model)
    layers = list(range(lens.n_layers))
    opt = make_optimizer(layer_groups(lens, layers), TrainConfig(optimizer="muon", steps=1))
    muon, adamw = opt.parts
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    weights = [p for g in muon.param_groups for p in g["params"]]
    biases = [p for g in adamw.param_groups for p in g["params"]]
    assert weights and all(p.ndim == 2 for p in weights) and biases and all(p.ndim == 1 for p in biases)
    assert {id(p) for p in weights + biases} == {id(p) for p in lens.parameters()}
    res = train_lens(model, lens, seqs, paper(optimizer="muon", lr=None, steps=6, tokens_per_step=64,
                                              checkpoint_every=0, validation_tokens=64), progress=False)
    assert res.info["optimizer"] == "muon"
    assert res.info["validation"]["best_kl"] < res.info["validation"]["start_kl"]


@pytest.mark.parametrize("optimizer", ["adam", "muon", "sgd"])
def test_a_rejected_layer_slows_down_and_kept_steps_speed_it_up_again(model, optimizer):
    """Per layer: a rejection halves the learning rate (and drops the optimiser state), each kept step
    multiplies it by GROW, never past the base rate; the other layers are untouched."""
    from tl_tunedlens.training.optim import BACKTRACK, GROW, accept_step_, layer_groups, reject_step_, set_lrs

    lens = TunedLens.from_model(model)
    cfg = TrainConfig(optimizer=optimizer, steps=4)
    opt = make_optimizer(layer_groups(lens, [0, 1]), cfg)
    groups = lambda layer: [g for g in opt.param_groups if g["layer"] == layer]
    base = {id(g): g["initial_lr"] for g in opt.param_groups}
    reject_step_(opt, 0)
    reject_step_(opt, 0)
    accept_step_(opt, 0)
    accept_step_(opt, 1)
    set_lrs(opt, cfg, 0)
    for g in groups(0):
        assert g["lr"] == pytest.approx(base[id(g)] * BACKTRACK ** 2 * GROW)
    for g in groups(1):
        assert g["lr"] == pytest.approx(base[id(g)])
    for _ in range(20):
        accept_step_(opt, 0)
    set_lrs(opt, cfg, 0)
    assert all(g["lr"] == pytest.approx(base[id(g)]) for g in groups(0))


@pytest.mark.parametrize("every, steps, scores", [(1, 6, 7), (3, 6, 3), (4, 6, 3), (10, 6, 2)])
def test_the_slice_judges_every_k_steps_and_the_last(model, seqs, monkeypatch, every, steps, scores):
    """The start is scored, then every ``validate_every`` steps and once more for the steps left at the end."""
    from tl_tunedlens.training.validation import Validation

    calls = []
    real = Validation.layer_kl
    monkeypatch.setattr(Validation, "layer_kl", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    cfg = TrainConfig(steps=steps, tokens_per_step=32, lstsq_tokens=128, validation_tokens=64, validate_every=every,
                      checkpoint_every=0)
    res = train_lens(model, TunedLens.from_model(model), seqs, cfg, progress=False)
    assert len(calls) == scores and res.steps == steps


def _validation_kl(model, lens, seqs, cfg):
    """Per-layer KL of ``lens`` on the run's validation slice, computed here independently of the trainer."""
    from tl_tunedlens.core.vocab import vocab_products
    from tl_tunedlens.training.order import stream_positions
    from tl_tunedlens.training.validation import Validation

    n_fit, n_val = cfg.lstsq_sequences(seqs.shape[1]), cfg.validation_sequences(seqs.shape[1])
    val = seqs[stream_positions(len(seqs), n_fit, n_val, cfg.seed)]
    return Validation(model, lens, val, micro_batch=4, chunk_tokens=64,
                      products=vocab_products(lens.unembed)).layer_kl(lens, list(range(lens.n_layers)))


@pytest.mark.parametrize("optimizer, lr", [("adam", 0.5), ("sgd", 50.0), ("muon", 5.0)])
def test_refinement_never_makes_a_layer_worse_on_validation(model, seqs, optimizer, lr):
    """Steps far too large: every one hurts, each is rejected (the layer put back, its step halved), and
    the lens returned is, layer by layer, no worse than the least-squares start on the validation slice."""
    cfg = TrainConfig(optimizer=optimizer, lr=lr, steps=4, tokens_per_step=64, lstsq_tokens=128,
                      validation_tokens=64, checkpoint_every=0)
    start = TunedLens.from_model(model)
    train_lens(model, start, seqs, dataclasses.replace(cfg, steps=0), progress=False)
    lens = TunedLens.from_model(model)
    res = train_lens(model, lens, seqs, cfg, progress=False)
    before, after = _validation_kl(model, start, seqs, cfg), _validation_kl(model, lens, seqs, cfg)
    assert (after <= before + 1e-6).all()
    assert sum(res.info["validation"]["rejected_steps"]) > 0
    assert res.info["validation"]["best_kl"] == pytest.approx(after.mean().item(), rel=1e-5)
    assert res.info["validation"]["start_kl"] == pytest.approx(before.mean().item(), rel=1e-5)
