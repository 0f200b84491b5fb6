"""The experiment tools on the real SmolLM2-135M, each on a short text: a lens on hook_resid_mid (both
backends), layer transfer, causal bases and ablation effects, inversion, logit difference and prediction depth."""

from __future__ import annotations

import pytest
import torch

from tl_tunedlens import LogitLens, TunedLens
from tl_tunedlens.analysis import PredictionTrajectory, ablation_effects, causal_basis, evaluate_lenses, transfer_matrix
from tl_tunedlens.data import load_tokens
from tl_tunedlens.training import TrainConfig, train_lens
from tl_tunedlens.viz import write_report

pytestmark = pytest.mark.integration
LAYERS = [5, 15, 25]
TEXT = "The Eiffel Tower is in the city of"


def _lstsq(model, layers, hook_names=None, tokens=1024):
    train = load_tokens("shakespeare", model.tokenizer, 128, split="train", max_tokens=tokens)
    lens = TunedLens.from_model(model, hook_names=hook_names)
    train_lens(model, lens, train.sequences, TrainConfig(steps=1, tokens_per_step=128, lstsq_tokens=tokens,
                                                         layers=layers, checkpoint_every=0), progress=False)
    return lens


@pytest.fixture(scope="module")
def lens(smollm2):
    return _lstsq(smollm2, LAYERS)


@pytest.fixture(scope="module")
def held(smollm2):
    return load_tokens("shakespeare", smollm2.tokenizer, 64, split="heldout", max_tokens=128)


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_resid_mid_lens(backend, request, held, tmp_path):
    model = request.getfixturevalue("smollm2" if backend == "hooked" else "smollm2_bridge")
    lens = _lstsq(model, [12], hook_names="resid_mid", tokens=512)
    assert lens.hook_names[12] == "blocks.12.hook_resid_mid"
    lens.save(tmp_path)
    loaded = TunedLens.load(tmp_path, model)
    metrics = evaluate_lenses(model, held.sequences, tuned=loaded)
    entry = metrics["layers"][12]
    assert entry["hook"] == "blocks.12.hook_resid_mid"
    assert entry["tuned"]["kl"] < 0.5 * entry["logit"]["kl"], entry


def test_layer_transfer(smollm2, lens, held):
    metrics = evaluate_lenses(smollm2, held.sequences, tuned=lens)
    transfer = transfer_matrix(smollm2, lens, held.sequences, layers=LAYERS)
    kl = torch.tensor(transfer["kl"])
    diagonal = torch.tensor([metrics["layers"][i]["tuned"]["kl"] for i in LAYERS])
    torch.testing.assert_close(kl.diagonal(), diagonal, rtol=1e-4, atol=1e-4)
    # a translator is best on its own layer's residual (each column's minimum is on the diagonal)
    assert (kl.argmin(0) == torch.arange(len(LAYERS))).all(), kl


def test_causal_basis_and_effects(smollm2, lens):
    basis = causal_basis(lens, smollm2, TEXT, 15, k=3, max_iter=5)
    u = basis.directions
    torch.testing.assert_close(u.T @ u, torch.eye(3), atol=1e-4, rtol=0)
    assert (basis.lens_effects[:-1] >= basis.lens_effects[1:]).all() and basis.lens_effects[0] > 0.05
    effects = ablation_effects(lens, smollm2, TEXT, 15, u)
    assert (effects.model_effects > 0).all() and -1 <= effects.spearman <= 1
    logit = ablation_effects(LogitLens.from_model(smollm2), smollm2, TEXT, 15, u, method="resample")
    assert logit.lens_effects.shape == (3,) and (logit.model_effects > 0).all()


def test_inversion_round_trip(smollm2, lens):
    traj_tokens = smollm2.to_tokens(TEXT)
    _, cache = smollm2.run_with_cache(traj_tokens, names_filter=lens.hook_names)
    target = lens.log_probs(cache[lens.hook_names[15]][0, -3:], 15)
    inv = lens.invert(target, 15, max_iter=30)
    assert inv.kl.max() < 1e-3, inv.kl


def test_logit_difference_and_prediction_depth(smollm2, lens, tmp_path):
    ids = [smollm2.tokenizer.encode(t, add_special_tokens=False)[0] for t in (" Paris", " London")]
    traj = PredictionTrajectory.from_model(lens, smollm2, TEXT, watch=ids)
    diff = traj.logit_diff(" Paris", " London")[:, 0, -1]
    assert diff[-1] > 0  # the model prefers " Paris"
    depth = traj.slice_positions(-1).prediction_depth()
    assert depth.shape == (1, 1) and 0 <= int(depth) <= lens.n_layers
    page = write_report(tmp_path / "report.html", smollm2, lens, TEXT, stats=["kl"], contrast=(" Paris", " London"))
    text = page.read_text()
    assert "logit difference" in text and "prediction depth" in text
