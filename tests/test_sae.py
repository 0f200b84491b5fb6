"""Lenses and sae-lens SAEs together: every lens route reads through an attached SAE, sae-lens's models without
the hub, and the splice / latent experiments (tiny models; an SAE built with sae-lens's own classes)."""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("sae_lens", reason="sae-lens is not installed (extra [sae]; TransformerLens 3.x only)")

from conftest import BACKENDS, make_tiny_model, random_tuned_lens, tiny_hf_model, tiny_tokenizer  # noqa: E402
from sae_lens import TopKSAE, TopKSAEConfig  # noqa: E402
from sae_lens.saes.sae import SAEMetadata  # noqa: E402
from tl_tunedlens import LensError, LensRecord, LogitLens, ModelLoadError, as_sae_transformer, load_model  # noqa: E402
from tl_tunedlens.cli import main as cli_main  # noqa: E402
from tl_tunedlens.models import load_sae  # noqa: E402
from tl_tunedlens.analysis import PredictionTrajectory  # noqa: E402
from tl_tunedlens.analysis.sae import ablate_latent, most_active_latent, splice_effect, steer_latent  # noqa: E402
from tl_tunedlens.core.backend import capture_residuals  # noqa: E402
from tl_tunedlens.viz import latent_effect_figure, report_html, splice_effect_figure  # noqa: E402

SITE, SITE_LAYER, N_LAYERS, D_MODEL = "blocks.1.hook_resid_post", 2, 4, 16


def tiny_sae(site: str = SITE, seed: int = 0) -> TopKSAE:
    """A TopK SAE of sae-lens's own class on ``site``, seeded random weights."""
    torch.manual_seed(seed)
    return TopKSAE(TopKSAEConfig(d_in=D_MODEL, d_sae=64, k=4, metadata=SAEMetadata(hook_name=site)))


@pytest.fixture(params=BACKENDS)
def setup(request):
    """``(plain model, its sae-lens model, a random tuned lens, tokens)`` on each backend."""
    base = make_tiny_model("RMS", backend=request.param, n_layers=N_LAYERS, process=True)
    tokens = torch.randint(0, 37, (2, 10), generator=torch.Generator().manual_seed(1))
    return base, as_sae_transformer(base), random_tuned_lens(base), tokens


def test_as_sae_transformer_keeps_the_model_bit_for_bit(setup):
    base, model, lens, tokens = setup
    reference = base(tokens)  # a Bridge is converted in place: base is model then
    assert type(model).__name__ in ("HookedSAETransformer", "SAETransformerBridge")
    assert torch.equal(model(tokens), reference)
    assert as_sae_transformer(model) is model
    assert not any(p.requires_grad for p in model.parameters())
    lens.check_model(model)  # the same unembedding
    if type(model).__name__ == "HookedSAETransformer":  # weights shared, not copied
        assert model.W_U.data_ptr() == base.W_U.data_ptr()


def test_load_model_gives_an_sae_bridge_without_the_hub():
    model = load_model(tiny_hf_model("RMS"), backend="bridge", tokenizer=tiny_tokenizer(), sae_transformer=True)
    assert type(model).__name__ == "SAETransformerBridge"
    model.add_sae(tiny_sae("blocks.0.hook_resid_post"))
    assert "blocks.0.hook_out.hook_sae_output" in model.hook_dict


def test_a_missing_sae_lens_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sae_lens.analysis", None)
    with pytest.raises(ModelLoadError, match=r"pip install 'tl-tunedlens\[sae\]'"):
        as_sae_transformer(make_tiny_model("RMS"))
    with pytest.raises(ModelLoadError, match="sae-lens is not installed"):
        load_model(tiny_hf_model("RMS"), backend="bridge", tokenizer=tiny_tokenizer(), sae_transformer=True)


def test_every_route_reads_through_an_attached_sae(setup):
    base, model, lens, tokens = setup
    _, clean = model.run_with_cache(tokens, names_filter=lens.names_filter)
    clean_resids = lens.residuals_from_cache(clean)
    sae = tiny_sae()
    with torch.no_grad():  # an intervention by hand, before any SAE is attached: translate the SAE's reconstruction
        by_hand = model.run_with_hooks(tokens, fwd_hooks=[(SITE, lambda x, hook: lens.transform(sae.decode(sae.encode(x)), SITE))])
    model.add_sae(sae)
    try:
        # cache route: the names filter, and a full cache of run_with_cache_with_saes, read what flows downstream
        _, cache = model.run_with_cache(tokens, names_filter=lens.names_filter)
        resids = lens.residuals_from_cache(cache)
        with torch.no_grad():
            downstream = sae.decode(sae.encode(clean_resids[SITE_LAYER]))
        assert torch.equal(resids[:SITE_LAYER], clean_resids[:SITE_LAYER])
        torch.testing.assert_close(resids[SITE_LAYER], downstream, atol=1e-5, rtol=1e-5)
        assert torch.equal(lens.residuals_from_cache(cache, sae_read="input")[SITE_LAYER], clean_resids[SITE_LAYER])
        log_probs = lens.log_probs_from_cache(cache)
        _, full = model.run_with_cache(tokens)
        assert torch.equal(lens.log_probs_from_cache(full), log_probs)
        # hook route, both reads (the lens was built for `base`: model= names the model its hooks run in)
        for sae_read in ("output", "input"):
            record = LensRecord()
            model.run_with_hooks(tokens, fwd_hooks=lens.hooks(record, sae_read=sae_read, model=model))
            assert torch.equal(record.stack(), lens.log_probs_from_cache(cache, sae_read=sae_read))
        # residual capture (training, evaluation) and trajectories
        assert torch.equal(capture_residuals(model, tokens, lens.hook_names), resids)
        assert torch.equal(capture_residuals(model, tokens, lens.hook_names, sae_read="input")[SITE_LAYER],
                           clean_resids[SITE_LAYER])
        traj = PredictionTrajectory.from_model(lens, model, tokens)
        assert torch.allclose(traj.mean("kl")[:-1], PredictionTrajectory.from_log_probs(log_probs, tokens).mean("kl")[:-1])
        # intervention: the translated residual replaces what flows downstream of the SAE
        intervened = model.run_with_hooks(tokens, fwd_hooks=lens.hooks(intervene=SITE, model=model))
    finally:
        model.reset_saes()
    torch.testing.assert_close(intervened, by_hand, atol=1e-4, rtol=1e-4)


def test_what_to_run_when_the_sae_site_is_not_cached(setup):
    _, model, lens, tokens = setup
    with model.saes(saes=[tiny_sae()]):
        _, plain = model.run_with_cache(tokens, names_filter=lens.hook_names)
        with pytest.raises(LensError, match=r"the cache has no hook point 'blocks.1.hook_resid_post' \(nor, with an "
                                             r"sae-lens SAE attached there, its hook_sae_output\): run .*names_filter=lens.names_filter"):
            lens.residuals_from_cache(plain)
        _, inputs_only = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_sae_input")
                                              or lens.names_filter(name) and "hook_sae" not in name)
        with pytest.raises(LensError, match="wrapped by an SAE and the cache has only its hook_sae_input.*sae_read='input'"):
            lens.residuals_from_cache(inputs_only)
        assert lens.residuals_from_cache(inputs_only, sae_read="input").shape[0] == N_LAYERS + 1
        with pytest.raises(LensError, match="sae_read must be 'output'"):
            lens.hooks(LensRecord(), sae_read="recons")


def test_splicing_changes_only_later_layers_and_the_error_term_changes_nothing(setup):
    _, model, lens, tokens = setup
    effect = splice_effect(lens, model, tiny_sae(), tokens)
    assert (effect.site, effect.site_layer) == (SITE, lens.layer_of(SITE))
    assert effect.clean.shape == (N_LAYERS + 1, *tokens.shape)
    assert torch.equal(effect.spliced[:SITE_LAYER], effect.clean[:SITE_LAYER])
    torch.testing.assert_close(effect.error_term, effect.clean, atol=1e-5, rtol=0)
    assert effect.clean[-1].abs().max() < 1e-5  # the last row is the model's own output
    assert (effect.mean()["spliced"][SITE_LAYER:] > effect.mean()["clean"][SITE_LAYER:] + 1e-3).all()
    assert not model.acts_to_saes  # the SAE was only attached for the runs
    assert splice_effect_figure(effect).data[1].y == tuple(effect.mean()["spliced"].tolist())


def test_latent_ablation_and_steering_change_only_later_layers(setup):
    _, model, lens, tokens = setup
    sae = tiny_sae()
    latent = most_active_latent(model, sae, tokens)
    effect = ablate_latent(lens, model, sae, tokens, latent)
    fires = effect.acts > 0
    assert fires.any() and torch.equal(effect.where, fires)
    assert torch.equal(effect.kl[:SITE_LAYER], torch.zeros_like(effect.kl[:SITE_LAYER]))
    assert not effect.top1_changed[:SITE_LAYER].any()
    assert (effect.kl[SITE_LAYER][fires] > 0).all()  # where it fires, the site's own prediction moves
    assert torch.equal(effect.kl[SITE_LAYER][~fires], torch.zeros_like(effect.kl[SITE_LAYER][~fires]))
    for b in range(tokens.shape[0]):  # causal: nothing changes before the first position where it fires
        first = int(fires[b].nonzero()[0]) if fires[b].any() else tokens.shape[1]
        assert torch.equal(effect.kl[:, b, :first], torch.zeros_like(effect.kl[:, b, :first]))
    summary = effect.summary()
    assert summary["kl"][:SITE_LAYER].eq(0).all() and (summary["kl"][SITE_LAYER:] > 0).all()
    steered = steer_latent(lens, model, sae, tokens, latent, 3.0)
    assert steered.where.all() and steered.kl[:SITE_LAYER].eq(0).all() and (steered.summary()["kl"][SITE_LAYER:] > 0).all()
    assert len(latent_effect_figure(effect).data) == 2
    with pytest.raises(LensError, match="latent 64 is out of range: this SAE has latents 0..63"):
        ablate_latent(lens, model, sae, tokens, 64)


def test_experiments_refuse_a_plain_model_or_an_attached_sae():
    base = make_tiny_model("RMS", n_layers=N_LAYERS)
    lens, tokens = LogitLens.from_model(base), torch.randint(0, 37, (1, 6))
    with pytest.raises(LensError, match="cannot splice SAEs: use sae-lens's model, model = as_sae_transformer"):
        splice_effect(lens, base, tiny_sae(), tokens)
    model = as_sae_transformer(base)
    model.add_sae(tiny_sae())
    with pytest.raises(LensError, match="already attached at 'blocks.1.hook_resid_post': call model.reset_saes"):
        splice_effect(lens, model, tiny_sae(), tokens)
    with pytest.raises(LensError, match="'blocks.1.hook_mlp_out' is not a lens site"):
        splice_effect(lens, as_sae_transformer(base), tiny_sae("blocks.1.hook_mlp_out"), tokens)


def test_report_shows_the_sae_experiments():
    model = as_sae_transformer(make_tiny_model("RMS", n_layers=N_LAYERS))
    page = report_html(model, random_tuned_lens(model), torch.randint(0, 37, (1, 8)), sae=tiny_sae(), latent=3)
    assert 'id="sae-splice"' in page and 'id="sae-latent"' in page
    assert "Splicing the SAE at blocks.1.hook_resid_post" in page and "Ablating latent 3" in page


def test_load_sae_reads_what_sae_lens_saved(tmp_path, capsys):
    sae = tiny_sae()
    sae.save_model(tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    assert type(loaded).__name__ == "TopKSAE" and loaded.cfg.metadata.hook_name == SITE
    assert torch.equal(loaded.W_dec, sae.W_dec) and torch.equal(loaded.W_enc, sae.W_enc)
    with pytest.raises(ModelLoadError, match="no SAE in .* \\(no cfg.json\\): pass a folder written by sae-lens"):
        load_sae(tmp_path)
    assert cli_main(["show", "--sae", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert cli_main(["show", "--latent", "3", "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no cfg.json" in err[0] and "--latent needs --sae" in err[1]
    assert not (tmp_path / "r.html").exists()
