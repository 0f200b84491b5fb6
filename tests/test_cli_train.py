"""``tl-tunedlens train`` / ``eval`` end to end on a tiny model, and their one-line errors."""

from __future__ import annotations

import json

import pytest

from conftest import make_tiny_model
from tl_tunedlens import TunedLens
from tl_tunedlens.cli import main


class CharTokenizer:
    eos_token_id = 0
    padding_side = "right"

    def __call__(self, text, add_special_tokens=False, verbose=False):
        return {"input_ids": [1 + (ord(c) % 36) for c in text]}


@pytest.fixture
def tiny(monkeypatch):
    import tl_tunedlens.cli.eval as cli_eval
    import tl_tunedlens.cli.train as cli_train

    model = make_tiny_model("RMS", n_layers=2, d_model=16, d_vocab=37)
    model.tokenizer = CharTokenizer()
    monkeypatch.setattr(cli_train, "load_model_from_args", lambda args: model)
    monkeypatch.setattr(cli_eval, "load_model_from_args", lambda args: model)
    return model


@pytest.fixture
def texts(tmp_path):
    d = tmp_path / "texts"
    d.mkdir()
    for i in range(10):
        (d / f"t{i}.txt").write_text(" ".join(f"word{j * i % 17}" for j in range(60)))
    return d


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_then_eval_end_to_end(tiny, texts, tmp_path, capsys):
    out = tmp_path / "lens"
    code, stdout, err = _run(capsys, "train", "--data", str(texts), "--out", str(out), "--seq-len", "16",
                             "--steps", "4", "--tokens-per-step", "64", "--lstsq-tokens", "128", "--no-progress")
    assert code == 0, err
    assert "final loss" in stdout
    assert {p.name for p in out.iterdir()} == {"config.json", "lens.safetensors", "checkpoint.pt"}
    lens = TunedLens.load(out, tiny)
    info = lens.training_info
    assert info["steps"] == 4 and info["tokens_seen"] == 4 * 64 and info["init"] == "lstsq"
    assert info["split"] == "train" and info["data"] == str(texts)

    metrics_file = tmp_path / "m.json"
    code, stdout, err = _run(capsys, "eval", "--data", str(texts), "--lens", str(out), "--seq-len", "16",
                             "--tokens", "45", "--out", str(metrics_file), "--no-progress")
    assert code == 0, err
    assert "tuned KL" in stdout
    metrics = json.loads(metrics_file.read_text())
    assert metrics["tokens"] == 45 and len(metrics["layers"]) == 3
    tuned = [e["tuned"]["kl"] for e in metrics["layers"][:-1]]
    logit = [e["logit"]["kl"] for e in metrics["layers"][:-1]]
    assert all(t < lo for t, lo in zip(tuned, logit))

    code, stdout, err = _run(capsys, "eval", "--data", str(texts), "--seq-len", "16", "--tokens", "30", "--no-progress")
    assert code == 0 and "tuned KL" not in stdout and "logit KL" in stdout

    # resume of a finished run re-saves the same lens
    code, _, err = _run(capsys, "train", "--data", str(texts), "--out", str(out), "--seq-len", "16", "--steps", "4",
                        "--tokens-per-step", "64", "--lstsq-tokens", "128", "--no-progress", "--resume")
    assert code == 0, err


def test_train_on_resid_mid_then_eval_with_transfer(tiny, texts, tmp_path, capsys):
    out = tmp_path / "mid"
    code, _, err = _run(capsys, "train", "--data", str(texts), "--out", str(out), "--seq-len", "16", "--steps", "2",
                        "--tokens-per-step", "64", "--lstsq-tokens", "128", "--hooks", "resid_mid", "--no-progress")
    assert code == 0, err
    assert TunedLens.load(out, tiny).hook_names == ["blocks.0.hook_resid_mid", "blocks.1.hook_resid_mid",
                                                    "blocks.1.hook_resid_post"]
    metrics_file, page = tmp_path / "m.json", tmp_path / "page.html"
    code, stdout, err = _run(capsys, "eval", "--data", str(texts), "--lens", str(out), "--seq-len", "16", "--tokens", "45",
                             "--transfer", "--out", str(metrics_file), "--report", str(page), "--no-progress")
    assert code == 0, err
    metrics = json.loads(metrics_file.read_text())
    assert [e["hook"] for e in metrics["layers"]][:2] == ["blocks.0.hook_resid_mid", "blocks.1.hook_resid_mid"]
    kl = metrics["transfer"]["kl"]
    assert metrics["transfer"]["layers"] == [0, 1] and kl[1][1] == pytest.approx(metrics["layers"][1]["tuned"]["kl"])
    assert "layer transfer" in stdout and "layer transfer" in page.read_text()
    code, _, err = _run(capsys, "eval", "--data", str(texts), "--seq-len", "16", "--transfer", "--no-progress")
    assert code == 2 and "--lens" in err
    code, _, err = _run(capsys, "train", "--data", str(texts), "--out", str(tmp_path / "bad"), "--seq-len", "16",
                        "--hooks", "blocks.0.attn.hook_z", "--no-progress")
    assert code == 2 and "not a residual-stream hook point" in err


@pytest.mark.parametrize("extra, pattern", [
    (["--seq-len", "64"], "exceeds the model's context n_ctx=32"),
    (["--seq-len", "16", "--tokens-per-step", "8"], "below one sequence"),
    (["--seq-len", "16", "--resume"], "no checkpoint"),
    (["--seq-len", "16", "--data", "missing.txt"], "does not exist"),
])
def test_train_errors_are_one_line_and_write_nothing(tiny, texts, tmp_path, capsys, extra, pattern, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    argv = ["train", "--data", str(texts), "--out", str(out), "--steps", "2", "--no-progress", *extra]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and pattern in lines[0] and lines[0].startswith("tl-tunedlens train: error:")
    assert not out.exists() or not any(out.iterdir())


def test_data_errors(tiny, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, _, err = _run(capsys, "train", "--data", str(empty), "--out", str(tmp_path / "o"), "--seq-len", "16")
    assert code == 2 and "is empty" in err
    short = tmp_path / "short.txt"
    short.write_text("tiny\n")
    code, _, err = _run(capsys, "train", "--data", str(short), "--split", "all", "--out", str(tmp_path / "o"),
                        "--seq-len", "16", "--steps", "1", "--tokens-per-step", "16", "--init", "identity", "--optimizer", "adam")
    assert code == 2 and "fewer than one sequence" in err
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"body": "x"}\n')
    code, _, err = _run(capsys, "eval", "--data", str(jl), "--seq-len", "16")
    assert code == 2 and "--text-field" in err


def test_existing_checkpoint_needs_resume(tiny, texts, tmp_path, capsys):
    out = tmp_path / "o"
    args = ["train", "--data", str(texts), "--out", str(out), "--seq-len", "16", "--steps", "1",
            "--tokens-per-step", "16", "--init", "identity", "--optimizer", "adam", "--no-progress"]
    assert _run(capsys, *args)[0] == 0
    code, _, err = _run(capsys, *args)
    assert code == 2 and "--resume" in err


def test_help_is_complete(capsys):
    for sub, words in [("train", ["--resume", "--init", "--tokens-per-step", "--optimizer", "--seed"]),
                       ("eval", ["--lens", "--tokens", "--out", "--data"])]:
        with pytest.raises(SystemExit):
            main([sub, "--help"])
        out = capsys.readouterr().out
        assert all(w in out for w in words)


@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_rank_that_fails_after_joining_leaves_the_group_at_once(tiny, texts, tmp_path, capsys, monkeypatch, command):
    """Under torchrun a rank that fails (here: loading the model) aborts the group, so the others fail at
    their next collective instead of waiting out ``--dist-timeout``; the error is still one line."""
    import importlib

    from tl_tunedlens.errors import LensError

    module = importlib.import_module(f"tl_tunedlens.cli.{command}")
    calls = []

    class FakeDist:
        is_main, active = True, True

        def abort(self):
            calls.append("abort")

        def close(self):
            calls.append("close")

    def failing_load(args):
        raise LensError("model could not be loaded on this rank")

    monkeypatch.setattr(module, "start_distributed", lambda args: FakeDist())
    monkeypatch.setattr(module, "load_model_from_args", failing_load)
    argv = ["--data", str(texts), "--seq-len", "16", "--no-progress"]
    if command == "train":
        argv += ["--out", str(tmp_path / "out"), "--steps", "1", "--tokens-per-step", "16"]
    code, _, err = _run(capsys, command, *argv)
    assert code == 2 and "could not be loaded" in err and len(err.strip().splitlines()) == 1
    assert calls == ["abort"]
