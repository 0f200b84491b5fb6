"""Prediction trajectories and their statistics: hand-computed values, batch shapes, and exact
agreement with direct lens computations on tiny random models."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import BACKENDS, make_tiny_model
from tl_tunedlens import LensError, LensRecord, LogitLens, TunedLens
from tl_tunedlens.analysis import stats
from tl_tunedlens.analysis.trajectory import PredictionTrajectory, compare, compare_lenses, trajectory_pair

LN2 = math.log(2.0)


def lp(*probs) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log()


# --- textbook statistics on hand-made distributions -----------------------------------------
def test_hand_computed_values():
    p, q = lp(0.5, 0.25, 0.25, 0.0), lp(0.25, 0.25, 0.25, 0.25)
    assert stats.entropy(p).item() == pytest.approx(1.5 * LN2)
    assert stats.entropy(q).item() == pytest.approx(2 * LN2)
    assert stats.kl_divergence(p, q).item() == pytest.approx(0.5 * LN2)
    assert stats.kl_divergence(q, p).item() == math.inf or stats.kl_divergence(q, p).item() > 1e6
    # m = (0.375, 0.25, 0.25, 0.125): KL(p||m) = 0.5 ln(4/3), KL(q||m) = 0.25 ln(4/3)
    assert stats.js_divergence(p, q).item() == pytest.approx(0.375 * math.log(4 / 3))
    assert stats.total_variation(p, q).item() == pytest.approx(0.25)


def test_extremes_identical_and_disjoint():
    p, q = lp(0.5, 0.5, 0.0, 0.0), lp(0.0, 0.0, 0.3, 0.7)
    for f in (stats.kl_divergence, stats.js_divergence, stats.total_variation):
        assert f(p, p).item() == 0.0
    assert stats.js_divergence(p, q).item() == pytest.approx(LN2)
    assert stats.total_variation(p, q).item() == pytest.approx(1.0)


def test_rank_and_target_log_prob():
    p = lp(0.1, 0.5, 0.3, 0.1)
    ranks = stats.target_rank(p.expand(5, 4), torch.tensor([1, 2, 0, 3, -1]))
    assert ranks.tolist() == [1, 2, 3, 3, 0]  # ties share the better rank; -1 = no target
    tlp = stats.target_log_prob(p.expand(2, 4), torch.tensor([2, -1]))
    assert tlp[0].item() == pytest.approx(math.log(0.3)) and math.isnan(tlp[1].item())


def test_random_distributions_properties():
    gen = torch.Generator().manual_seed(0)
    a = (3 * torch.randn(200, 50, generator=gen, dtype=torch.float64)).log_softmax(-1)
    b = (3 * torch.randn(200, 50, generator=gen, dtype=torch.float64)).log_softmax(-1)
    js_ab, js_ba = stats.js_divergence(a, b), stats.js_divergence(b, a)
    torch.testing.assert_close(js_ab, js_ba)
    assert (js_ab >= 0).all() and (js_ab <= LN2 + 1e-12).all()
    tv = stats.total_variation(a, b)
    assert (tv >= 0).all() and (tv <= 1).all()
    kl = stats.kl_divergence(a, b)
    assert (tv <= torch.sqrt(kl / 2) + 1e-9).all()  # Pinsker
    assert (js_ab <= tv * LN2 + 1e-9).all()  # JS <= ln2 * TV
    assert (stats.entropy(a) <= math.log(50) + 1e-9).all()


# --- a hand-made trajectory -------------------------------------------------------------------
def hand_trajectory(**kwargs) -> PredictionTrajectory:
    # 3 rows (2 layers + output), 1 prompt, 2 positions, vocab 4; tokens [2, 1]: target of pos 0 is 1
    rows = torch.stack([
        torch.stack([lp(0.25, 0.25, 0.25, 0.25), lp(0.7, 0.1, 0.1, 0.1)]),
        torch.stack([lp(0.5, 0.25, 0.25, 0.0), lp(0.1, 0.7, 0.1, 0.1)]),
        torch.stack([lp(0.1, 0.6, 0.2, 0.1), lp(0.1, 0.1, 0.7, 0.1)]),
    ]).unsqueeze(1)  # [3 1 2 4]
    return PredictionTrajectory.from_log_probs(rows, torch.tensor([2, 1]), top_k=2, **kwargs), rows


def test_hand_trajectory_statistics():
    traj, rows = hand_trajectory()
    assert traj.n_rows == 3 and traj.batch == 1 and traj.n_pos == 2
    assert traj.layer_labels == ["0", "1", "output"]
    assert traj.targets.tolist() == [[1, -1]]
    assert traj.entropy()[:, 0, 0].tolist() == pytest.approx([2 * LN2, 1.5 * LN2, stats.entropy(lp(0.1, 0.6, 0.2, 0.1)).item()])
    # KL(output || layer) at position 0, by hand
    f = [0.1, 0.6, 0.2, 0.1]
    kl0 = sum(fi * math.log(fi / 0.25) for fi in f)
    assert traj.kl()[0, 0, 0].item() == pytest.approx(kl0)
    assert traj.kl()[1, 0, 0].item() == math.inf or traj.kl()[1, 0, 0].item() > 1e6  # layer 1 gives token 3 zero mass
    assert traj.kl()[2].abs().max().item() == 0.0
    # next token (id 1) at position 0: probs 0.25, 0.25, 0.6 -> CE, prob, rank
    assert traj.cross_entropy()[:, 0, 0].tolist() == pytest.approx([-math.log(0.25)] * 2 + [-math.log(0.6)])
    assert traj.target_prob()[:, 0, 0].tolist() == pytest.approx([0.25, 0.25, 0.6])
    assert traj.target_ranks[:, 0, 0].tolist() == [1, 2, 1]  # row 0: all tied -> 1; row 1: 0.5 > 0.25
    assert torch.isnan(traj.cross_entropy()[:, 0, 1]).all() and torch.isnan(traj.rank()[:, 0, 1]).all()
    assert traj.max_prob()[:, 0, 1].tolist() == pytest.approx([0.7, 0.7, 0.7])
    assert traj.top_k_indices[2, 0, 0].tolist() == [1, 2]
    # first-order differences and KL between consecutive layers
    torch.testing.assert_close(traj.delta("entropy"), traj.entropy()[1:] - traj.entropy()[:-1])
    assert traj.statistic("delta_ce").shape == (2, 1, 2)
    assert traj.kl_steps[1, 0, 1].item() == pytest.approx(stats.kl_divergence(rows[2, 0, 1], rows[1, 0, 1]).item())
    assert traj.row_labels("kl_step") == ["0→1", "1→output"]
    # averages skip positions without a next token
    assert traj.mean("ce").tolist() == pytest.approx(traj.cross_entropy()[:, 0, 0].tolist())
    assert traj.mean("entropy").tolist() == pytest.approx(traj.entropy().mean((1, 2)).tolist())


def test_compare_hand_trajectories():
    a, rows = hand_trajectory(keep_log_probs=True)
    assert a.log_probs.shape == (3, 1, 2, 4)
    same = compare(a, a)
    for name in ("kl", "js", "tv"):
        assert same.statistic(name).abs().max().item() == 0.0
    b = PredictionTrajectory.from_log_probs(rows.flip(0), torch.tensor([2, 1]), keep_log_probs=True)
    c = compare(a, b)
    torch.testing.assert_close(c.js, compare(b, a).js)
    assert c.tv[0, 0, 0].item() == pytest.approx(stats.total_variation(rows[0, 0, 0], rows[2, 0, 0]).item())
    assert c.mean("tv").shape == (3,)
    with pytest.raises(LensError, match="keep_log_probs"):
        compare(hand_trajectory()[0], a)


def test_bad_input():
    traj, rows = hand_trajectory()
    with pytest.raises(LensError, match="unknown statistic"):
        traj.statistic("perplexity")
    with pytest.raises(LensError, match="tokens have shape"):
        PredictionTrajectory.from_log_probs(rows, torch.tensor([1, 2, 3]))
    with pytest.raises(LensError, match="integer"):
        PredictionTrajectory.from_log_probs(rows, torch.tensor([1.0, 2.0]))
    with pytest.raises(LensError, match="at least two rows"):
        PredictionTrajectory.from_log_probs(rows[:1])
    with pytest.raises(LensError, match="out of range"):
        traj.select(3)


# --- agreement with the lens on a tiny model ---------------------------------------------------
def random_tuned(model, seed: int = 0) -> TunedLens:
    lens = TunedLens.from_model(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in lens.translators:
            t.weight.copy_(0.2 * torch.randn(t.weight.shape, generator=gen))
            t.bias.copy_(0.2 * torch.randn(t.bias.shape, generator=gen))
    return lens


def test_exact_agreement_with_lens(tiny_model, tiny_tokens):
    lens = random_tuned(tiny_model)
    traj = PredictionTrajectory.from_model(lens, tiny_model, tiny_tokens, top_k=5, keep_log_probs=True)
    logits, cache = tiny_model.run_with_cache(tiny_tokens, names_filter=lens.hook_names)
    direct = lens.log_probs_from_cache(cache)  # [layer batch pos vocab]
    n, (batch, n_pos) = lens.n_layers, tiny_tokens.shape
    assert traj.top_k_log_probs.shape == (n + 1, batch, n_pos, 5)
    assert traj.entropies.shape == traj.kl_to_final.shape == traj.target_ranks.shape == (n + 1, batch, n_pos)
    assert traj.kl_steps.shape == (n, batch, n_pos)
    torch.testing.assert_close(traj.log_probs[:n], direct[:n])
    torch.testing.assert_close(traj.log_probs[n], logits.log_softmax(-1))  # last row = model output
    torch.testing.assert_close(traj.entropies, stats.entropy(direct), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(traj.kl_to_final, stats.kl_divergence(direct[-1:].expand_as(direct), direct), atol=1e-5, rtol=1e-5)
    nxt = tiny_tokens[:, 1:]
    torch.testing.assert_close(traj.target_log_probs[:, :, :-1], direct[:, :, :-1].gather(-1, nxt[None, ..., None].expand(n + 1, -1, -1, 1)).squeeze(-1))
    # the hooks route with top_k records the same top-k
    record = LensRecord()
    tiny_model.run_with_hooks(tiny_tokens, fwd_hooks=lens.hooks(record, top_k=5))
    torch.testing.assert_close(traj.top_k_log_probs[:n], torch.stack([record.top_k_log_probs[i] for i in range(n)]))
    # without keep_log_probs no full log-probs are held
    assert PredictionTrajectory.from_model(lens, tiny_model, tiny_tokens).log_probs is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_from_cache_and_batch_selection(tiny_tokens, backend):
    model = make_tiny_model("RMS", backend=backend)
    lens = random_tuned(model, seed=1)
    logits, cache = model.run_with_cache(tiny_tokens, names_filter=lens.hook_names)
    a = PredictionTrajectory.from_cache(lens, cache, logits, tiny_tokens)
    b = PredictionTrajectory.from_cache(lens, cache, None, tiny_tokens)  # lens's own last layer
    torch.testing.assert_close(a.entropies, b.entropies, atol=1e-5, rtol=1e-5)
    assert a.lens_name == "tuned lens"
    no_tokens = PredictionTrajectory.from_cache(lens, cache, logits)
    assert torch.isnan(no_tokens.cross_entropy()).all() and no_tokens.input_strings(0)[0] == ""
    one = PredictionTrajectory.from_model(lens, model, tiny_tokens[1])
    sel = a.select(1)
    assert sel.batch == 1 and sel.tokens.tolist() == [tiny_tokens[1].tolist()]
    torch.testing.assert_close(sel.kl_to_final, one.kl_to_final, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sel.target_ranks, one.target_ranks)
    # batch averages are the means over prompts of per-prompt averages (equal lengths)
    torch.testing.assert_close(a.mean("kl"), (a.select(0).mean("kl") + a.select(1).mean("kl")) / 2)
    with pytest.raises(LensError, match="model_logits"):
        PredictionTrajectory.from_cache(lens, cache, logits[:, :3], tiny_tokens)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compare_lenses_streaming_equals_full(tiny_tokens, backend):
    model = make_tiny_model("LN", backend=backend)
    tuned, logit = random_tuned(model), LogitLens.from_model(model)
    streamed = compare_lenses(logit, tuned, model, tiny_tokens)
    full = compare(PredictionTrajectory.from_model(logit, model, tiny_tokens, keep_log_probs=True),
                   PredictionTrajectory.from_model(tuned, model, tiny_tokens, keep_log_probs=True))
    for name in ("kl", "js", "tv"):
        torch.testing.assert_close(streamed.statistic(name), full.statistic(name), atol=1e-6, rtol=1e-5)
    assert streamed.kl.shape == (model.cfg.n_layers + 1, *tiny_tokens.shape)
    assert streamed.js[-1].abs().max() == 0  # both lenses end at the model's output
    assert (streamed.js.max() <= LN2) and (streamed.tv.max() <= 1.0) and streamed.js[:-1].min() > 0
    torch.testing.assert_close(compare_lenses(tuned, logit, model, tiny_tokens).js, streamed.js)
    same = compare_lenses(logit, TunedLens.from_model(model), model, tiny_tokens)  # untrained = logit lens
    assert same.js.abs().max() < 1e-6 and same.tv.abs().max() < 1e-6
    a, b, c = trajectory_pair(logit, tuned, model, tiny_tokens)
    torch.testing.assert_close(b.kl_to_final, PredictionTrajectory.from_model(tuned, model, tiny_tokens).kl_to_final)
    torch.testing.assert_close(c.tv, streamed.tv)
    assert a.lens_name == "logit lens" and b.lens_name == "tuned lens"


def test_model_checks(tiny_tokens):
    model, other = make_tiny_model("LN"), make_tiny_model("LN", seed=5)
    with pytest.raises(LensError):
        PredictionTrajectory.from_model(TunedLens.from_model(other), model, tiny_tokens)
    with pytest.raises(LensError, match="tokenizer"):
        PredictionTrajectory.from_model(TunedLens.from_model(model), model, "no tokenizer here")


@pytest.mark.integration
def test_smollm2_trajectory(smollm2):
    lens = LogitLens.from_model(smollm2)
    traj = PredictionTrajectory.from_model(lens, smollm2, "The capital of France is Paris")
    assert traj.n_rows == 31 and traj.input_strings(0)[-1] == " Paris"
    assert traj.rank()[-1, 0, -2].item() <= 5  # the model itself predicts " Paris" well
    assert traj.mean("kl")[1:29].min() > traj.mean("kl")[29]  # the logit lens improves toward the top
