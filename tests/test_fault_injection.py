"""Fault injection: ``tl-tunedlens train`` killed with SIGKILL at random moments and inside its writes
(a checkpoint's temp file written but not renamed, the lens's files staged, the lens half renamed), then
resumed until it finishes, ends with a lens bit-identical to an uninterrupted run's, and no temp or lock
file left.

Each run is a forked child of this test process (the package is already imported, so a run starts
in milliseconds), running the CLI in-process on a tiny model with one torch thread."""

from __future__ import annotations

import os
import random
import signal
import sys
import time

import pytest
import torch

from conftest import make_tiny_model
from forking import run_forked

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs os.fork (Linux)")

STEPS = 8
TRAIN = ["train", "--seq-len", "16", "--steps", str(STEPS), "--tokens-per-step", "32", "--lstsq-tokens", "64",
         "--checkpoint-every", "1", "--init", "lstsq", "--no-progress"]


class CharTokenizer:
    eos_token_id = 0
    padding_side = "right"

    def __call__(self, text, add_special_tokens=False, verbose=False):
        return {"input_ids": [1 + (ord(c) % 36) for c in text]}


def _run(argv: list[str], kill: tuple[str, float] | None) -> int:
    """The CLI in a forked child (:func:`forking.run_forked`); its exit code, ``-9`` when killed."""
    return run_forked(argv, kill=kill)[0]


@pytest.fixture
def tiny(monkeypatch):
    import tl_tunedlens.cli.train as cli_train

    model = make_tiny_model("RMS", n_layers=2, d_model=16, d_vocab=37)
    model.tokenizer = CharTokenizer()
    monkeypatch.setattr(cli_train, "load_model_from_args", lambda args: model)
    return model


def test_sigkill_anywhere_then_resume_is_bit_identical(tiny, tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(8):
        (texts / f"t{i}.txt").write_text(" ".join(f"word{j * i % 17}" for j in range(60)))
    argv = [*TRAIN, "--data", str(texts)]

    t0 = time.monotonic()
    assert _run([*argv, "--out", str(tmp_path / "clean")], None) == 0
    clean_s = time.monotonic() - t0
    expected = (tmp_path / "clean" / "lens.safetensors").read_bytes()

    seed = random.randrange(10**6)
    rng = random.Random(seed)
    out = tmp_path / "killed"
    checkpoint = out / "checkpoint.pt"

    def remaining() -> int:
        return STEPS - (torch.load(checkpoint, weights_only=True)["step"] if checkpoint.exists() else 0)

    # write kills count this run's writes: `remaining()` checkpoints, then the lens's two files
    plans = [lambda: ("time", rng.uniform(0.05, 0.4) * clean_s),                # anywhere early (the least-squares start...)
             lambda: ("fsync", min(3, remaining())),                           # inside a checkpoint write
             lambda: ("time", rng.uniform(0.05, 0.5) * clean_s),                # anywhere in a resumed run
             lambda: ("fsync", rng.randint(1, max(1, remaining() - 1))),        # inside a later checkpoint write
             lambda: ("fsync", remaining() + 1),                               # lens.safetensors staged
             lambda: ("replace", remaining() + 2),                             # lens.safetensors renamed, config not
             lambda: ("fsync", remaining() + 2),                               # config.json staged
             lambda: ("time", rng.uniform(0.0, 1.0) * clean_s)]
    history = []
    for plan in [*plans, lambda: None]:
        kill = plan()
        resume = ["--resume"] if checkpoint.exists() else []
        code = _run([*argv, "--out", str(out), *resume], kill)
        history.append((kill, bool(resume), code))
        assert code in (0, -signal.SIGKILL), f"seed {seed}: {history}"
    assert code == 0, f"seed {seed}: {history}"
    assert sum(c == -signal.SIGKILL for *_, c in history) >= 5, f"seed {seed}: too few kills landed: {history}"
    assert (out / "lens.safetensors").read_bytes() == expected, f"seed {seed}: {history}"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "lens.safetensors"], \
        f"seed {seed}: temp or lock files left: {sorted(p.name for p in out.iterdir())}"
