"""SmolLM2-135M, as a HookedTransformer and as a TransformerBridge: a brief training run of a few layers beats
the logit lens on held-out plays."""

from __future__ import annotations

import pytest

from tl_tunedlens import TunedLens
from tl_tunedlens.data import load_tokens
from tl_tunedlens.analysis import evaluate_lenses
from tl_tunedlens.training import TrainConfig, train_lens

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_brief_training_beats_logit_lens_on_held_out_plays(backend, request, tmp_path):
    smollm2 = request.getfixturevalue("smollm2" if backend == "hooked" else "smollm2_bridge")
    train = load_tokens("shakespeare", smollm2.tokenizer, 128, split="train", max_tokens=2048)
    held = load_tokens("shakespeare", smollm2.tokenizer, 128, split="heldout", max_tokens=256)
    assert set(train.documents).isdisjoint(held.documents)
    layers = [4, 12, 20]
    lens = TunedLens.from_model(smollm2)
    cfg = TrainConfig(steps=2, tokens_per_step=256, init="lstsq", lstsq_tokens=1536, layers=layers,
                      checkpoint_every=1)
    result = train_lens(smollm2, lens, train.sequences, cfg, out_dir=tmp_path, progress=False)
    assert result.info["lstsq_tokens"] == 1536 and len(result.losses) == 2
    lens.save(tmp_path, training=result.info)
    loaded = TunedLens.load(tmp_path, smollm2)
    metrics = evaluate_lenses(smollm2, held.sequences, tuned=loaded, bytes_per_token=held.bytes_per_token)
    assert metrics["tokens"] == 2 * 127 and 2.5 < metrics["bytes_per_token"] < 5
    for layer in layers:
        entry = metrics["layers"][layer]
        assert entry["tuned"]["kl"] < 0.5 * entry["logit"]["kl"], entry
        assert entry["tuned"]["top1"] > entry["logit"]["top1"]
    untouched = metrics["layers"][8]
    assert untouched["tuned"]["kl"] == pytest.approx(untouched["logit"]["kl"], rel=1e-5)
