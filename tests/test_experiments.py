"""The experiment tools on tiny random models of both backends: lenses on any residual hook point, layer
transfer, subspace ablation and causal bases, inversion, logit differences and prediction depth."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import BACKENDS, make_tiny_model, random_tuned_lens
from tl_tunedlens import LensError, LensRecord, LogitLens, TunedLens
from tl_tunedlens.analysis import PredictionTrajectory, ablation_effects, causal_basis, evaluate_lenses, spearman
from tl_tunedlens.analysis import trajectory_pair, transfer_matrix
from tl_tunedlens.core.ablation import ablate, derangement
from tl_tunedlens.core.backend import capture_residuals, flatten_tokens
from tl_tunedlens.core.layers import lens_hook_names, resid_hook_names
from tl_tunedlens.training import TrainConfig, train_lens

MODELS = [(kind, backend) for backend in BACKENDS for kind in ("LN", "RMS")]


@pytest.fixture(scope="module", params=MODELS, ids=lambda p: "-".join(p))
def model(request):
    kind, backend = request.param
    return make_tiny_model(kind, backend=backend, process=True)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 37, (2, 10), generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def lens(model):
    return random_tuned_lens(model)


# --- 2. lenses on any residual hook point ------------------------------------------------------
def test_hook_name_lists():
    assert lens_hook_names(3) == resid_hook_names(3)
    assert lens_hook_names(3, "resid_mid") == [f"blocks.{i}.hook_resid_mid" for i in range(3)] + ["blocks.2.hook_resid_post"]
    # any order in, forward order out; the final residual stream is the output row whether listed or not
    names = ["blocks.2.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.2.hook_resid_post"]
    assert lens_hook_names(3, names) == ["blocks.0.hook_resid_mid", "blocks.2.hook_resid_pre", "blocks.2.hook_resid_post"]
    for bad, match in [(["blocks.0.attn.hook_z"], "not a residual-stream"), (["blocks.3.hook_resid_pre"], "past the last"),
                       (["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"], "same residual stream"),
                       ([], "at least one hook")]:
        with pytest.raises(LensError, match=match):
            lens_hook_names(3, bad)


def test_resid_mid_lens_trains_saves_loads_and_decodes(model, tokens, tmp_path):
    lens = TunedLens.from_model(model, hook_names="resid_mid")
    assert lens.n_layers == 3 and lens.hook_names[0] == "blocks.0.hook_resid_mid"
    assert lens.layer_labels == ["0.mid", "1.mid", "2.mid", "output"]
    seqs = torch.randint(0, 37, (12, 12), generator=torch.Generator().manual_seed(0))
    config = TrainConfig.preset("paper", steps=15, tokens_per_step=64, checkpoint_every=0)
    result = train_lens(model, lens, seqs, config, progress=False)
    assert result.losses[-1] < 0.9 * result.losses[0]
    # the lens reads hook_resid_mid: the cache, hooks and direct routes agree there
    _, cache = model.run_with_cache(tokens, names_filter=lens.hook_names)
    direct = lens.log_probs(cache["blocks.1.hook_resid_mid"], 1)
    torch.testing.assert_close(lens.log_probs_from_cache(cache)[1], direct)
    record = LensRecord()
    model.run_with_hooks(tokens, fwd_hooks=lens.hooks(record, layers=1))
    torch.testing.assert_close(record.log_probs[1], direct)
    # saved with its hook names; loaded back exactly
    lens.save(tmp_path / "mid")
    config = json.loads((tmp_path / "mid" / "config.json").read_text())
    assert config["layer_convention"] == "hook_names" and config["hook_names"] == lens.hook_names
    loaded = TunedLens.load(tmp_path / "mid", model)
    assert loaded.hook_names == lens.hook_names
    torch.testing.assert_close(loaded.log_probs_from_cache(cache), lens.log_probs_from_cache(cache))
    with pytest.raises(LensError, match="tuned-lens format"):
        lens.save(tmp_path / "ref", format="tuned-lens")
    # evaluated against the logit lens on the same hooks, and displayed with hook labels
    metrics = evaluate_lenses(model, seqs[:4], tuned=lens)
    assert [e["hook"] for e in metrics["layers"]] == lens.hook_names
    logit_t, tuned_t, _ = trajectory_pair(LogitLens.from_model(model, hook_names="resid_mid"), lens, model, tokens)
    assert tuned_t.layer_labels == lens.layer_labels
    with pytest.raises(LensError, match="different hook points"):
        trajectory_pair(LogitLens.from_model(model), lens, model, tokens)


def test_a_user_list_of_hooks(model, tokens):
    names = ["blocks.1.hook_resid_mid", "blocks.0.hook_resid_pre"]
    lens = TunedLens.from_model(model, hook_names=names)
    assert lens.n_layers == 2 and len(lens.translators) == 2
    assert lens.hook_names == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.2.hook_resid_post"]
    traj = PredictionTrajectory.from_model(lens, model, tokens)
    assert traj.layer_labels == ["0.pre", "1.mid", "output"] and traj.n_rows == 3
    torch.testing.assert_close(traj.kl()[-1], torch.zeros_like(traj.kl()[-1]))


# --- 1. layer transfer -------------------------------------------------------------------------
def test_transfer_diagonal_is_the_per_layer_kl(model, lens):
    seqs = torch.randint(0, 37, (6, 9), generator=torch.Generator().manual_seed(2))
    metrics = evaluate_lenses(model, seqs, tuned=lens, chunk_tokens=16)
    transfer = transfer_matrix(model, lens, seqs, chunk_tokens=16)
    assert transfer["layers"] == [0, 1, 2] and transfer["tokens"] == metrics["tokens"]
    kl = torch.tensor(transfer["kl"])
    expected = torch.tensor([metrics["layers"][i]["tuned"]["kl"] for i in range(3)])
    torch.testing.assert_close(kl.diagonal(), expected, rtol=1e-5, atol=1e-6)
    assert (kl >= 0).all()
    sub = transfer_matrix(model, lens, seqs, layers=[2, 0], chunk_tokens=16)
    torch.testing.assert_close(torch.tensor(sub["kl"]), kl[[0, 2]][:, [0, 2]], rtol=1e-5, atol=1e-6)


# --- 3. ablation and causal bases ----------------------------------------------------------------
def _record(model, lens, tokens, layer, **ablation):
    record = LensRecord()
    logits = model.run_with_hooks(tokens, fwd_hooks=lens.hooks(record, layers=layer, ablate=layer, **ablation))
    return record.log_probs[layer], logits


def test_ablating_nothing_changes_nothing(model, lens, tokens):
    clean = model(tokens)
    for method in ("mean", "resample", "zero"):
        lp, logits = _record(model, lens, tokens, 1, subspace=torch.zeros(lens.d_model, 0), method=method)
        torch.testing.assert_close(logits, clean)


def test_whole_space_ablations(model, lens, tokens):
    eye = torch.eye(lens.d_model)
    _, cache = model.run_with_cache(tokens, names_filter=lens.hook_names)
    h = cache[lens.hook_names[1]]
    lp, _ = _record(model, lens, tokens, 1, subspace=eye, method="zero")
    torch.testing.assert_close(lp, lens.log_probs(torch.zeros_like(h), 1).expand_as(lp))
    lp, _ = _record(model, lens, tokens, 1, subspace=eye, method="mean")
    mean_prediction = lens.log_probs(h.mean((0, 1)), 1)
    torch.testing.assert_close(lp, mean_prediction.expand_as(lp), atol=1e-4, rtol=1e-4)
    mu = torch.randn(lens.d_model)
    lp, _ = _record(model, lens, tokens, 1, subspace=eye, method="mean", mean=mu)
    torch.testing.assert_close(lp, lens.log_probs(mu, 1).expand_as(lp), atol=1e-4, rtol=1e-4)


def test_resample_uses_a_derangement():
    for n in (2, 3, 17):
        perm = derangement(n, seed=n)
        assert sorted(perm.tolist()) == list(range(n)) and (perm != torch.arange(n)).all()
    h = torch.randn(5, 4, 8)
    u = torch.linalg.qr(torch.randn(8, 3)).Q
    out = ablate(h, u, "resample", seed=1)
    torch.testing.assert_close(out - out @ u @ u.T, h - h @ u @ u.T, atol=1e-5, rtol=1e-5)  # outside U: kept
    source = h.reshape(-1, 8)[derangement(20, 1)]
    torch.testing.assert_close((out @ u).reshape(-1, 3), source @ u, atol=1e-5, rtol=1e-5)  # inside U: another's


def test_intervention_and_cache_routes_agree(model, lens, tokens):
    u = torch.linalg.qr(torch.randn(lens.d_model, 2, generator=torch.Generator().manual_seed(0))).Q
    h = flatten_tokens(capture_residuals(model, tokens, [lens.hook_names[2]]))[0]
    for method in ("mean", "resample", "zero"):
        lp, _ = _record(model, lens, tokens, 2, subspace=u, method=method, seed=4)
        by_cache = lens.log_probs(ablate(h, u, method, seed=4), 2)
        torch.testing.assert_close(lp.flatten(0, 1), by_cache, atol=1e-5, rtol=1e-5)


def test_bad_subspaces_are_refused(lens):
    with pytest.raises(LensError, match="orthonormal"):
        lens.hooks(ablate=1, subspace=torch.ones(lens.d_model, 2))
    with pytest.raises(LensError, match="d_model"):
        lens.hooks(ablate=1, subspace=torch.eye(3))
    with pytest.raises(LensError, match="unknown ablation method"):
        lens.hooks(ablate=1, subspace=torch.eye(lens.d_model)[:, :1], method="shuffle")
    with pytest.raises(LensError, match="both ablate"):
        lens.hooks(ablate=1)


def test_causal_basis_is_orthonormal_and_ordered(model, lens, tokens):
    basis = causal_basis(lens, model, tokens, 2, k=3, max_iter=10)
    u = basis.directions
    assert u.shape == (lens.d_model, 3) and basis.hook_name == lens.hook_names[2]
    torch.testing.assert_close(u.T @ u, torch.eye(3), atol=1e-5, rtol=0)
    assert (basis.lens_effects[:-1] >= basis.lens_effects[1:]).all() and (basis.lens_effects > 0).all()
    # the first direction beats a random one, and the lens effects are what ablation_effects measures
    effects = ablation_effects(lens, model, tokens, 2, u)
    torch.testing.assert_close(effects.lens_effects, basis.lens_effects, atol=1e-5, rtol=1e-4)
    rand = torch.nn.functional.normalize(torch.randn(lens.d_model, generator=torch.Generator().manual_seed(1)), dim=0)
    assert ablation_effects(lens, model, tokens, 2, rand[:, None]).lens_effects[0] < basis.lens_effects[0]
    assert (effects.model_effects > 0).all() and -1 <= effects.spearman <= 1


def test_model_effect_equals_a_hand_written_hook(model, lens, tokens):
    u = torch.linalg.qr(torch.randn(lens.d_model, 1, generator=torch.Generator().manual_seed(2))).Q
    effects = ablation_effects(lens, model, tokens, 1, u, method="zero")
    clean = model(tokens).log_softmax(-1)

    def remove(resid, hook):
        return resid - (resid @ u) @ u.T

    ablated = model.run_with_hooks(tokens, fwd_hooks=[(lens.hook_names[1], remove)]).log_softmax(-1)
    expected = (clean.exp() * (clean - ablated)).sum(-1).mean()
    torch.testing.assert_close(effects.model_effects[0], expected, atol=1e-5, rtol=1e-4)


def test_spearman():
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([4.0, 3, 2, 1])) == pytest.approx(-1.0)
    # ties share their average rank: ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4)
    assert spearman(torch.tensor([1.0, 2, 2, 3]), torch.tensor([1.0, 2, 3, 4])) == pytest.approx(0.9486833, abs=1e-6)


# --- 4. inversion -------------------------------------------------------------------------------
def test_inversion_round_trip(model, lens, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=lens.hook_names)
    for layer in (0, 2, lens.n_layers):
        target = lens.log_probs(cache[lens.hook_names[layer]], layer).detach()
        inv = lens.invert(target, layer)
        assert inv.residual.shape == cache[lens.hook_names[layer]].shape and inv.kl.shape == target.shape[:-1]
        assert inv.kl.max() < 1e-4, (layer, inv.kl.max())
        torch.testing.assert_close(lens.log_probs(inv.residual, layer), target, atol=2e-3, rtol=0)
        assert (inv.kl <= inv.start_kl + 1e-6).all()
    with pytest.raises(LensError, match="d_vocab"):
        lens.invert(torch.zeros(3, 5), 1)


def test_inversion_of_a_made_up_target_improves_on_the_start(model, lens):
    target = torch.randn(4, lens.d_vocab, generator=torch.Generator().manual_seed(0)).log_softmax(-1)
    inv = lens.invert(target, 1, max_iter=50)
    assert (inv.kl <= inv.start_kl + 1e-6).all() and inv.kl.mean() < inv.start_kl.mean()


# --- 5. logit difference, position slices, prediction depth --------------------------------------
def test_logit_diff_slices_and_depth(model, lens, tokens):
    full = PredictionTrajectory.from_model(lens, model, tokens, keep_log_probs=True)
    watched = PredictionTrajectory.from_model(lens, model, tokens, watch=[3, 7])
    diff = watched.logit_diff(3, 7)
    logits = torch.stack([lens(h, i) for i, h in enumerate(lens.residuals_from_cache(
        model.run_with_cache(tokens, names_filter=lens.hook_names)[1]))])
    torch.testing.assert_close(diff, (logits[..., 3] - logits[..., 7]).float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(full.logit_diff(3, 7), diff)
    with pytest.raises(LensError, match="not watched"):
        watched.logit_diff(3, 8)
    # positions: the same numbers, sliced
    part = full.slice_positions(slice(2, 5))
    assert part.n_pos == 3 and part.tokens.tolist() == tokens[:, 2:5].tolist()
    torch.testing.assert_close(part.kl(), full.kl()[:, :, 2:5])
    torch.testing.assert_close(part.logit_diff(3, 7), full.logit_diff(3, 7)[:, :, 2:5])
    assert full.slice_positions(-1).n_pos == 1 and full.take(batch=1, positions=[0, 4]).tokens.tolist() == [tokens[1, [0, 4]].tolist()]
    # prediction depth, by its definition
    depth = full.prediction_depth()
    top1 = full.log_probs.argmax(-1)
    for b in range(2):
        for p in range(tokens.shape[1]):
            agree = (top1[:, b, p] == top1[-1, b, p]).tolist()
            expected = min(l for l in range(len(agree)) if all(agree[l:]))
            assert depth[b, p] == expected
    assert (depth <= lens.n_layers).all()


def test_tokens_as_text():
    from tl_tunedlens.analysis.readouts import single_token_id

    class Tok:
        def encode(self, text, add_special_tokens=False):
            return {" Paris": [5], " London": [9]}.get(text, [1, 2])

    assert single_token_id(Tok(), " Paris") == 5 and single_token_id(Tok(), 9) == 9
    with pytest.raises(LensError, match="2 tokens"):
        single_token_id(Tok(), "Parisian")
