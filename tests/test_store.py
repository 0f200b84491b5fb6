"""The token store: an exact round trip, rows read on demand, refusals, and ``tokenize`` -> ``train`` / ``eval``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_tiny_model, tiny_tokenizer
from test_cli_train import CharTokenizer, _run, texts, tiny  # noqa: F401  (fixtures)
from tl_tunedlens import TunedLens
from tl_tunedlens.data import Document, open_store, tokenize, write_store
from tl_tunedlens.data.store import tokenizer_hash
from tl_tunedlens.errors import LensError
from tl_tunedlens.training import TrainConfig, train_lens
from tl_tunedlens.training.order import data_digest


class ShiftedTokenizer(CharTokenizer):
    """Another tokenizer: the same vocabulary size, other ids."""

    def __call__(self, text, add_special_tokens=False, verbose=False):
        return {"input_ids": [1 + (ord(c) + 5) % 36 for c in text]}


@pytest.fixture
def docs():
    return [Document(f"d{i}", " ".join(f"w{j * i % 13}" for j in range(30 + 7 * i))) for i in range(9)]


def test_round_trip_is_exact(docs, tmp_path):
    manifest = write_store(docs, CharTokenizer(), 16, tmp_path / "store", split={"data": "x", "split": "train"})
    ref = tokenize(docs, CharTokenizer(), 16)
    data = open_store(tmp_path / "store", CharTokenizer())
    seqs = data.sequences
    assert len(seqs) == len(ref) == manifest["count"] and seqs.shape == ref.sequences.shape
    assert torch.equal(seqs[list(range(len(seqs)))], ref.sequences)
    assert torch.equal(seqs[[7, 2, 7]], ref.sequences[[7, 2, 7]]) and torch.equal(seqs[3:5], ref.sequences[3:5])
    assert seqs[[1]].dtype == torch.int64
    assert seqs.digest == data_digest(ref.sequences) == manifest["digest"]
    assert data.bytes_per_token == ref.bytes_per_token and data.documents == ref.documents
    assert np.load(tmp_path / "store" / "tokens.npy", mmap_mode="r").dtype == np.uint32  # no len(): the wide ids
    head = open_store(tmp_path / "store", CharTokenizer(), max_tokens=40).sequences
    assert len(head) == 3 and head.digest == data_digest(ref.sequences[:3])
    capped = write_store(docs, CharTokenizer(), 16, tmp_path / "capped", max_tokens=50)
    assert capped["count"] == 3
    assert torch.equal(open_store(tmp_path / "capped", CharTokenizer()).sequences[[0, 1, 2]], ref.sequences[:3])


def test_a_fast_tokenizer_gets_narrow_ids_and_a_stable_hash(tmp_path):
    tok = tiny_tokenizer(37)
    docs = [Document("a", " ".join(f"t{i % 37}" for i in range(100)))]
    write_store(docs, tok, 8, tmp_path / "s")
    assert np.load(tmp_path / "s" / "tokens.npy", mmap_mode="r").dtype == np.uint16
    assert tokenizer_hash(tok) == tokenizer_hash(tiny_tokenizer(37)) != tokenizer_hash(tiny_tokenizer(41))
    assert torch.equal(open_store(tmp_path / "s", tiny_tokenizer(37)).sequences[[0, 1]],
                       tokenize(docs, tok, 8).sequences[:2])


def test_refusals_are_one_line(docs, tmp_path):
    write_store(docs, CharTokenizer(), 16, tmp_path / "store", split={"data": "x", "split": "train"})
    for call, pattern in [
        (lambda: open_store(tmp_path / "store", ShiftedTokenizer()), "another tokenizer"),
        (lambda: open_store(tmp_path / "store", CharTokenizer(), seq_len=32), "not --seq-len 32"),
        (lambda: open_store(tmp_path / "store", CharTokenizer(), split="heldout"), "--split train"),
        (lambda: write_store(docs, CharTokenizer(), 16, tmp_path / "store"), "already exists"),
        (lambda: write_store(docs[:1], CharTokenizer(), 4096, tmp_path / "short"), "fewer than one sequence"),
        (lambda: open_store(tmp_path, CharTokenizer()), "not a token store"),
    ]:
        with pytest.raises(LensError, match=pattern) as err:
            call()
        assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]   # nothing half-written


def test_training_on_a_store_equals_training_in_memory(docs, tmp_path):
    model = make_tiny_model("RMS", n_layers=2, d_model=16, d_vocab=37)
    write_store(docs, CharTokenizer(), 16, tmp_path / "store")
    stored = open_store(tmp_path / "store", CharTokenizer()).sequences
    config = TrainConfig(steps=3, tokens_per_step=64, lstsq_tokens=96, micro_batch=2)
    lenses = []
    for seqs in (stored, tokenize(docs, CharTokenizer(), 16).sequences):
        lens = TunedLens.from_model(model)
        train_lens(model, lens, seqs, config, progress=False)
        lenses.append(lens.state_dict())
    assert all(torch.equal(lenses[0][k], lenses[1][k]) for k in lenses[0])


def test_tokenize_then_train_and_eval_from_the_store(tiny, texts, tmp_path, capsys, monkeypatch):  # noqa: F811
    import tl_tunedlens.models as models

    monkeypatch.setattr(models, "load_tokenizer", lambda name: CharTokenizer())
    store, out = tmp_path / "store", tmp_path / "lens"
    code, stdout, err = _run(capsys, "tokenize", "--data", str(texts), "--out", str(store), "--seq-len", "16")
    assert code == 0, err
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["split"]["split"] == "train" and manifest["seq_len"] == 16 and str(manifest["count"]) in stdout
    code, stdout, err = _run(capsys, "train", "--data", str(store), "--out", str(out), "--steps", "2",
                             "--tokens-per-step", "64", "--lstsq-tokens", "128", "--no-progress")
    assert code == 0, err
    assert f"{manifest['count']} x 16 tokens" in stdout
    info = TunedLens.load(out, tiny).training_info
    assert info["store_digest"] == manifest["digest"] and info["split"] == "train"
    code, _, err = _run(capsys, "eval", "--data", str(store), "--lens", str(out), "--tokens", "30", "--no-progress")
    assert code == 2 and "--split train" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "train", "--data", str(store), "--out", str(tmp_path / "o2"), "--seq-len", "8")
    assert code == 2 and "not --seq-len 8" in err
    heldout = tmp_path / "heldout"
    assert _run(capsys, "tokenize", "--data", str(texts), "--out", str(heldout), "--seq-len", "16",
                "--split", "heldout")[0] == 0
    metrics = tmp_path / "m.json"
    code, stdout, err = _run(capsys, "eval", "--data", str(heldout), "--lens", str(out), "--tokens", "30",
                             "--out", str(metrics), "--no-progress")
    assert code == 0, err
    assert json.loads(metrics.read_text())["tokens"] == 30
