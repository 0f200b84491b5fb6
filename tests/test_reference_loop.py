"""The paper preset is the reference package's recipe: with the same tokens in the same order, our
per-step training loss equals that of the reference ``tuned-lens==0.2.0`` loop (reproduced in
``bench/reference_loop.py`` with the reference's own lens class) for the first steps."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from test_reference_compat import hf_llama, to_tl
from tl_tunedlens import TunedLens
from tl_tunedlens.training import TrainConfig, train_lens
from tl_tunedlens.training.order import step_sequences

pytest.importorskip("tuned_lens.nn", reason="the oracle needs `pip install --no-deps tuned-lens==0.2.0`")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from reference_loop import reference_train  # noqa: E402

STEPS, SEQ_LEN, PER_STEP = 5, 16, 4


@pytest.fixture(scope="module")
def setup():
    hf = hf_llama()
    model = to_tl(hf, fold_ln=False, center_writing_weights=False, center_unembed=False)
    seqs = torch.randint(0, model.cfg.d_vocab, (STEPS * PER_STEP + 3, SEQ_LEN), generator=torch.Generator().manual_seed(4))
    cfg = TrainConfig.preset("paper", steps=STEPS, tokens_per_step=PER_STEP * SEQ_LEN, micro_batch=2, checkpoint_every=0)
    lens = TunedLens.from_model(model)
    ours = train_lens(model, lens, seqs, cfg, progress=False)
    batches = [seqs[step_sequences(len(seqs), PER_STEP, s, cfg.seed)] for s in range(STEPS)]
    return hf, ours, lens, batches


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "reference-bf16-autocast"])
def test_paper_preset_losses_match_the_reference_loop(setup, autocast):
    hf, ours, lens, batches = setup
    ref = reference_train(hf, batches, micro_batch=2, autocast=autocast)
    assert len(ours.losses) == len(ref.losses) == STEPS
    assert ours.losses[-1] < ours.losses[0]                          # it trains
    rel = [abs(a - b) / b for a, b in zip(ours.losses, ref.losses)]
    assert max(rel) < (1e-4 if autocast is False else 1e-2), (ours.losses, ref.losses)
    if not autocast:  # the same translators after the same steps
        for i, translator in enumerate(lens.translators):
            torch.testing.assert_close(translator.weight, ref.lens.layer_translators[i].weight, rtol=1e-3, atol=1e-5)
