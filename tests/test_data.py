"""Data pipeline: sources, document split, tokenising into sequences, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tl_tunedlens import LensError
from tl_tunedlens.data import (Document, bits_per_byte, load_documents, load_tokens, sample_tokens,
                               split_documents, tokenize)


class CharTokenizer:
    """A tiny tokenizer: one token per character (ids 1..36), EOS = 0."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False, verbose=False):
        return {"input_ids": [1 + (ord(c) % 36) for c in text]}


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "texts"
    d.mkdir()
    for i in range(10):
        (d / f"doc{i:02d}.txt").write_text(f"document {i} " + "abc " * 20, encoding="utf-8")
    (d / "ignored.md").write_text("not a txt")
    return d


def test_folder_one_document_per_txt_file(folder):
    docs = load_documents(folder)
    assert [d.name for d in docs] == [f"doc{i:02d}.txt" for i in range(10)]


def test_txt_file_and_jsonl_field(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("hello world")
    assert load_documents(txt) == [Document("a.txt", "hello world")]
    jl = tmp_path / "d.jsonl"
    jl.write_text(json.dumps({"body": "one"}) + "\n\n" + json.dumps({"body": "two"}) + "\n")
    assert [d.text for d in load_documents(jl, text_field="body")] == ["one", "two"]


def test_jsonl_unknown_field_is_one_clear_line(tmp_path):
    jl = tmp_path / "d.jsonl"
    jl.write_text(json.dumps({"body": "one"}) + "\n")
    with pytest.raises(LensError, match="no field 'text'.*--text-field") as err:
        load_documents(jl)
    assert "\n" not in str(err.value)


def test_empty_and_missing_data(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(LensError, match="is empty"):
        load_documents(empty)
    with pytest.raises(LensError, match="does not exist"):
        load_documents(tmp_path / "nope.txt")
    (tmp_path / "none").mkdir()
    with pytest.raises(LensError, match="no .txt files"):
        load_documents(tmp_path / "none")


def test_hf_dataset_name_with_hub_unreachable(monkeypatch):
    import tl_tunedlens.artifacts.hub as hub

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=2.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(LensError, match="hub is unreachable"):
        load_documents("some-user/some-dataset")


def test_split_is_by_document_disjoint_and_seeded(folder):
    docs = load_documents(folder)
    train = split_documents(docs, "train", held_out=0.2, seed=0)
    held = split_documents(docs, "heldout", held_out=0.2, seed=0)
    assert len(held) == 2 and len(train) == 8
    assert {d.name for d in train}.isdisjoint({d.name for d in held})
    assert held == split_documents(docs, "heldout", held_out=0.2, seed=0)
    others = [split_documents(docs, "heldout", held_out=0.2, seed=s) for s in range(1, 6)]
    assert any(o != held for o in others)
    assert split_documents(docs, "all") == docs


def test_single_document_split_by_position():
    doc = Document("a.txt", "\n".join(f"line {i}" for i in range(100)))
    train = split_documents([doc], "train", held_out=0.1)[0].text
    held = split_documents([doc], "heldout", held_out=0.1)[0].text
    assert train + held == doc.text and 0 < len(held) < len(doc.text) // 5


def test_tokenize_joins_with_eos_and_cuts_sequences():
    tok = CharTokenizer()
    docs = [Document("a", "abcde"), Document("b", "fghij")]
    data = tokenize(docs, tok, seq_len=4)
    stream = [1 + ord(c) % 36 for c in "abcde"] + [0] + [1 + ord(c) % 36 for c in "fghij"]
    assert data.sequences.tolist() == [stream[0:4], stream[4:8]]
    assert data.bytes_per_token == pytest.approx(1.0)
    assert data.n_tokens == 8 and len(data) == 2


def test_tokenize_max_tokens_and_bytes_per_token():
    tok = CharTokenizer()
    docs = [Document(str(i), "é" * 50) for i in range(10)]   # 2 bytes per char
    data = tokenize(docs, tok, seq_len=10, max_tokens=35)
    assert data.sequences.shape == (3, 10)
    assert data.bytes_per_token == pytest.approx(2.0)


def test_too_little_data_and_seq_len_over_n_ctx():
    tok = CharTokenizer()
    with pytest.raises(LensError, match="fewer than one sequence of 64"):
        tokenize([Document("a", "short")], tok, seq_len=64)
    with pytest.raises(LensError, match="exceeds the model's context n_ctx=32"):
        tokenize([Document("a", "x" * 100)], tok, seq_len=64, n_ctx=32)


def test_load_tokens_train_and_heldout_disjoint(folder):
    tok = CharTokenizer()
    train = load_tokens(folder, tok, 16, split="train", held_out=0.2)
    held = load_tokens(folder, tok, 16, split="heldout", held_out=0.2)
    assert set(train.documents).isdisjoint(held.documents)


def test_bits_per_byte():
    assert bits_per_byte(math.log(2), 1.0) == pytest.approx(1.0)
    assert bits_per_byte(2 * math.log(2), 4.0) == pytest.approx(0.5)


def test_spread_sample_covers_every_document_in_proportion(tmp_path):
    tok = CharTokenizer()
    lines = lambda n, tag: "".join(f"{tag} line {i:03d}\n" for i in range(n))  # 14 characters a line
    docs = [Document("long", lines(400, "L")), Document("mid", lines(200, "M")), Document("short", lines(100, "S"))]
    data = sample_tokens(docs, tok, seq_len=32, max_tokens=32 * 28, seed=0)
    assert data.sequences.shape == (28, 32)
    counts = data.sequences_per_document()
    for name, share in (("long", 16), ("mid", 8), ("short", 4)):    # 4 : 2 : 1, as the documents' lengths
        assert abs(counts[name] - share) <= 1, counts
    assert set(counts) == set(data.documents) and len(data.origins) == 28
    first = data.origins[:7]
    assert {"long", "mid", "short"} <= set(first)                  # spread from the start, not document by document
    by_name = {d.name: tok(d.text)["input_ids"] for d in docs}
    for row, origin in zip(data.sequences.tolist(), data.origins):   # every sequence is a window of its document
        ids = by_name[origin]
        assert any(ids[i:i + 32] == row for i in range(len(ids) - 31))
    again = sample_tokens(docs, tok, seq_len=32, max_tokens=32 * 28, seed=0)
    assert torch.equal(again.sequences, data.sequences)
    other = sample_tokens(docs, tok, seq_len=32, max_tokens=32 * 28, seed=1)
    assert not torch.equal(other.sequences, data.sequences)
    assert data.bytes_per_token == pytest.approx(1.0)


def test_spread_sample_joins_short_documents_with_eos():
    tok = CharTokenizer()
    docs = [Document(f"d{i}", "abcdefgh") for i in range(12)]        # 8 tokens each, shorter than a sequence
    data = sample_tokens(docs, tok, seq_len=20, max_tokens=60)
    assert data.sequences.shape == (3, 20)
    assert (data.sequences == 0).sum() == 3 * 2                       # two EOS joins in each sequence
    with pytest.raises(LensError, match="fewer than one sequence of 200"):
        sample_tokens(docs, tok, seq_len=200, max_tokens=400)


def test_load_tokens_sample_modes(folder):
    tok = CharTokenizer()
    first = load_tokens(folder, tok, 16, split="all", max_tokens=64, sample="first")
    spread = load_tokens(folder, tok, 16, split="all", max_tokens=64)
    assert first.documents == ["doc00.txt"] and len(set(spread.origins)) == 4 <= len(spread.documents)
    assert first.split["sample"] == "first" and spread.split["sample"] == "spread"
    with pytest.raises(LensError, match="unknown sample"):
        load_tokens(folder, tok, 16, max_tokens=64, sample="random")


# --- mixtures of sources -------------------------------------------------------------------
def _corpus(tmp_path, name, letter, n_docs=10):
    d = tmp_path / name
    d.mkdir()
    for i in range(n_docs):
        (d / f"{name}{i:02d}.txt").write_text((letter * 7 + "\n") * 40, encoding="utf-8")
    return d


def test_mixture_parsing_weights_and_one_line_errors():
    from tl_tunedlens.data.mixture import parse_mixture

    assert parse_mixture("shakespeare") is None
    assert parse_mixture("shakespeare+fortunes") == [("shakespeare", 0.5), ("fortunes", 0.5)]
    parts = parse_mixture("shakespeare:3+fortunes:1")
    assert [n for n, _ in parts] == ["shakespeare", "fortunes"] and [w for _, w in parts] == pytest.approx([0.75, 0.25])
    for bad, pattern in [("shakespeare:0+fortunes", "positive number"), ("shakespeare+", "empty part"),
                         ("a:nan+b", "positive number"), ("a+a", "twice")]:
        with pytest.raises(LensError, match=pattern) as err:
            parse_mixture(bad)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.8, 0.2), (0.1, 0.9)])
def test_mixture_sample_has_the_asked_proportions_and_splits_each_part(tmp_path, weights):
    a, b = _corpus(tmp_path, "aaa", "a"), _corpus(tmp_path, "bbb", "b")
    source = f"{a}:{weights[0]}+{b}:{weights[1]}"
    tok = CharTokenizer()
    data = load_tokens(source, tok, 16, split="train", max_tokens=16 * 50)
    a_id = tok("a")["input_ids"][0]
    from_a = sum(int((row == a_id).sum() > 8) for row in data.sequences)
    assert len(data) == 50 and from_a == round(weights[0] * 50)
    assert data.split["mixture_sequences"] == {str(a): from_a, str(b): 50 - from_a}
    assert sorted(set(data.origins)) == sorted(set(data.origins))   # every origin names its part
    assert all(o.startswith((str(a) + "/", str(b) + "/")) for o in data.origins)
    # the sequences are interleaved, not one part after the other
    firsts = [int((row == a_id).sum() > 8) for row in data.sequences[:20]]
    assert 0 < sum(firsts) < 20
    # each part is split on its own: the held-out documents of the mixture are each part's held-out documents
    held = load_tokens(source, tok, 16, split="heldout", max_tokens=16 * 10)
    for part in (a, b):
        own = {d.name for d in split_documents(load_documents(part), "heldout")}
        assert {n.split("/")[-1] for n in held.documents if n.startswith(str(part) + "/")} <= own
    train_docs = {n for n in data.documents}
    assert not train_docs & set(held.documents)


def test_mixture_counts_round_to_the_total():
    from tl_tunedlens.data.mixture import mixture_counts

    assert mixture_counts([0.5, 0.5], 7) in ([4, 3], [3, 4])
    assert sum(mixture_counts([0.2, 0.3, 0.5], 101)) == 101
    assert mixture_counts([0.999, 0.001], 10) == [9, 1]   # a tiny share still gives one sequence


def test_embedded_corpora_fortunes_without_the_offensive_files_and_pydoc():
    from tl_tunedlens.data.corpora import CORPORA, FORTUNES_PER_DOCUMENT, fortunes_dir

    assert set(CORPORA) == {"shakespeare", "fortunes", "pydoc"}
    assert not any(p.name.endswith("-o") for p in fortunes_dir().iterdir())
    docs = load_documents("fortunes")
    assert {d.name.split("[")[0] for d in docs} == {"fortunes", "startrek", "murphy", "zippy", "limerick",
                                                   "gerrold.limerick"}
    assert all("\n%\n" not in d.text and "$FreeBSD" not in d.text for d in docs) and len(docs) > 12000 // FORTUNES_PER_DOCUMENT
    topics = load_documents("pydoc")
    assert len(topics) == 1 and len(topics[0].text) > 100_000 and "The \"assert\" statement" in topics[0].text
    mixed = load_documents("shakespeare+fortunes")
    assert len(mixed) == len(docs) + len(load_documents("shakespeare"))
