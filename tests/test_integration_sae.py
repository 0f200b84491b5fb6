"""SmolLM2-135M as sae-lens's HookedSAETransformer, offline, with an SAE on blocks.10.hook_resid_post (lens layer 11)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sae_lens", reason="sae-lens is not installed (extra [sae]; TransformerLens 3.x only)")

from sae_lens import TopKSAE, TopKSAEConfig  # noqa: E402
from sae_lens.saes.sae import SAEMetadata  # noqa: E402
from tl_tunedlens import LensRecord, TunedLens, load_model  # noqa: E402
from tl_tunedlens.analysis.sae import ablate_latent, most_active_latent, splice_effect  # noqa: E402

pytestmark = pytest.mark.integration
SITE = "blocks.10.hook_resid_post"


def test_smollm2_lens_reads_through_an_sae(smollm2):
    model = load_model("smollm2-135m", sae_transformer=True)
    tokens = model.to_tokens("To be, or not to be, that is the question")
    assert type(model).__name__ == "HookedSAETransformer"
    assert torch.equal(model(tokens), smollm2(tokens))  # the same model, bit for bit
    lens = TunedLens.from_model(model)
    assert lens.layer_of(SITE) == 11
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=576, d_sae=1024, k=32, metadata=SAEMetadata(hook_name=SITE)))

    effect = splice_effect(lens, model, sae, tokens)
    assert torch.equal(effect.spliced[:11], effect.clean[:11])  # layers before the SAE are untouched
    torch.testing.assert_close(effect.error_term, effect.clean, atol=1e-3, rtol=0)  # the error term undoes it
    assert effect.mean()["spliced"][-1] > effect.mean()["clean"][-1] + 0.1  # the output moves

    with model.saes(saes=[sae]):  # hook and cache routes agree with the SAE attached
        _, cache = model.run_with_cache(tokens, names_filter=lens.names_filter)
        record = LensRecord()
        model.run_with_hooks(tokens, fwd_hooks=lens.hooks(record, layers=[10, 11, 12, 30], positions=[-1]))
    for layer in record.layers:
        assert torch.equal(record.log_probs[layer], lens.log_probs(lens.residuals_from_cache(cache)[layer][:, [-1]], layer))

    latent = most_active_latent(model, sae, tokens)
    ablation = ablate_latent(lens, model, sae, tokens, latent)
    assert ablation.kl[:11].eq(0).all() and not ablation.top1_changed[:11].any()
    assert (ablation.summary()["kl"][11:] > 0).all()
