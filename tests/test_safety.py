"""Nothing lost, nothing silent: every bad input is one line (exit 2) and leaves every file as it was;
broken lenses are refused on load; output folders are owned (lock, --overwrite, stale temp files);
divergence stops training; lens hooks refuse another model.

The CLI runs in-process (``cli.main``) on a tiny model patched into every command."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_tiny_model, random_tuned_lens, tiny_tokenizer
from tl_tunedlens import LensRecord, TunedLens
from tl_tunedlens.artifacts.outdir import LOCK_NAME, OutputFolder, check_file_output
from tl_tunedlens.cli import main
from tl_tunedlens.errors import LensError, TrainingDivergedError
from tl_tunedlens.training import TrainConfig, train_lens

COMMANDS = ("train", "eval", "show", "predict", "serve", "demo")
LONG_TEXT = " ".join(f"t{4 + i % 30}" for i in range(40))  # more tokens than the tiny model's n_ctx=32


@pytest.fixture(scope="module")
def model():
    """A tiny Llama-type HookedTransformer with a word-level tokenizer (``t0`` .. ``t36``)."""
    m = make_tiny_model("RMS", n_layers=2, d_model=16, d_vocab=37)
    m.set_tokenizer(tiny_tokenizer(), default_padding_side="right")
    return m


@pytest.fixture
def world(model, tmp_path, monkeypatch):
    """A folder with texts, a good lens, broken lenses and assorted obstacles; the model patched in."""
    import importlib

    for name in COMMANDS:
        monkeypatch.setattr(importlib.import_module(f"tl_tunedlens.cli.{name}"), "load_model_from_args",
                            lambda args, name=None, **kwargs: model)
    monkeypatch.chdir(tmp_path)
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(6):
        (texts / f"t{i}.txt").write_text(" ".join(f"t{4 + (i * j) % 30}" for j in range(80)))
    random_tuned_lens(model).save(tmp_path / "lens")
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "folder").mkdir()
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    (tmp_path / "resume-me").mkdir()
    (tmp_path / "resume-me" / "checkpoint.pt").write_bytes(b"")
    _broken_copy(tmp_path, "nan-lens", lambda t: t["translators.1.weight"].__setitem__((3, 4), float("nan")))
    _broken_copy(tmp_path, "flipped-lens", None, flip=True)
    _broken_copy(tmp_path, "anonymous-lens", None, config=lambda c: c.update(unembed_hash=None, unembed_fingerprint=None))
    _broken_copy(tmp_path, "typo-lens", None, config=lambda c: c.update(training="x"))
    return tmp_path


def _broken_copy(root, name, edit_tensors, *, flip=False, config=None):
    src, dst = root / "lens", root / name
    dst.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    tensors = load_file(str(src / "lens.safetensors"))
    if edit_tensors is not None:
        edit_tensors(tensors)
        save_file(tensors, str(dst / "lens.safetensors"))
        cfg["weights_sha256"] = hashlib.sha256((dst / "lens.safetensors").read_bytes()).hexdigest()
    else:
        data = bytearray((src / "lens.safetensors").read_bytes())
        if flip:
            data[-5] ^= 0x01  # a low mantissa bit of the last weight: finite, still a valid file
        (dst / "lens.safetensors").write_bytes(bytes(data))
    if config is not None:
        config(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))


def snapshot(root) -> dict[str, str]:
    """Every file and folder under ``root``: relative path -> SHA-256 of its bytes ("dir" for folders)."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


TRAIN = ["train", "--data", "texts", "--seq-len", "16", "--steps", "2", "--tokens-per-step", "32",
         "--lstsq-tokens", "32", "--no-progress"]

# argv, the words the one line must hold
BAD_INPUTS = {
    "train out is a file": ([*TRAIN, "--out", "a-file"], "is a file: pass a folder"),
    "train out below a file": ([*TRAIN, "--out", "a-file/lens"], "nothing can be written below it"),
    "train out holds a lens": ([*TRAIN, "--out", "lens"], "already holds a lens"),
    "train resume and overwrite": ([*TRAIN, "--out", "lens", "--resume", "--overwrite"], "pass one of them"),
    "train empty checkpoint": ([*TRAIN, "--out", "resume-me", "--resume"], "not a readable checkpoint"),
    "train negative weight decay": ([*TRAIN, "--out", "o", "--weight-decay", "-1"], "use at least 0.0"),
    "train negative clip": ([*TRAIN, "--out", "o", "--clip", "-0.5"], "use at least 0.0"),
    "train zero lstsq tokens": ([*TRAIN, "--out", "o", "--lstsq-tokens", "0"], "use at least 1 token"),
    "train nan lr": ([*TRAIN, "--out", "o", "--lr", "nan"], "finite number"),
    "train zero lr": ([*TRAIN, "--out", "o", "--lr", "0"], "must be positive"),
    "train inf time budget": ([*TRAIN, "--out", "o", "--time-budget", "inf"], "finite number"),
    "train momentum 1": ([*TRAIN, "--out", "o", "--momentum", "1"], "must be below 1"),
    "train steps not a number": ([*TRAIN, "--out", "o", "--steps", "abc"], "not a whole number"),
    "train fractional steps": ([*TRAIN, "--out", "o", "--steps", "1.5"], "not a whole number"),
    "train fractional layer": ([*TRAIN, "--out", "o", "--layers", "1.5"], "not a whole number"),
    "train held-out 1": ([*TRAIN, "--out", "o", "--held-out", "1"], "must be below 1"),
    "train seq-len 1": ([*TRAIN, "--out", "o", "--seq-len", "1"], "use at least 2 tokens"),
    "train seq-len over n_ctx": ([*TRAIN, "--out", "o", "--seq-len", "64", "--tokens-per-step", "64"],
                                 "n_ctx=32"),
    "train non-UTF-8 jsonl": ([*TRAIN, "--out", "o", "--data", "bad.jsonl", "--split", "all"], "not UTF-8"),
    "eval out is a folder": (["eval", "--data", "texts", "--seq-len", "16", "--out", "folder"], "is a folder"),
    "eval out below a file": (["eval", "--data", "texts", "--seq-len", "16", "--out", "a-file/m.json"],
                              "below it"),
    "eval zero tokens": (["eval", "--data", "texts", "--tokens", "0"], "use at least 1 tokens"),
    "eval NaN lens": (["eval", "--data", "texts", "--seq-len", "16", "--lens", "nan-lens", "--out", "m.json"],
                      "translators.1.weight holds 1 non-finite"),
    "eval flipped byte": (["eval", "--data", "texts", "--seq-len", "16", "--lens", "flipped-lens", "--out", "m.json"],
                          "does not match the SHA-256"),
    "eval no model identity": (["eval", "--data", "texts", "--lens", "anonymous-lens"], "records no model identity"),
    "eval training not an object": (["eval", "--data", "texts", "--lens", "typo-lens"],
                                    "training must be an object or null, got 'x'"),
    "show out is a folder": (["show", "--out", "folder", "--text", "t5 t6 t7"], "is a folder"),
    "show text too long": (["show", "--text", LONG_TEXT], "more than the model's context n_ctx=32"),
    "show over max tokens": (["show", "--text", "t5 t6 t7 t8 t9", "--max-tokens", "3"], "more than the limit of 3"),
    "show top-k 0": (["show", "--top-k", "0"], "use at least 1"),
    "show unknown stat": (["show", "--stats", "kl,bogus"], "unknown statistic 'bogus'"),
    "predict position 999": (["predict", "--text", "t5 t6 t7", "--position", "999"], "position 999 is out of range"),
    "predict text too long": (["predict", "--text", LONG_TEXT], "--truncate"),
    "predict top-k over vocab": (["predict", "--text", "t5 t6", "--top-k", "99"], "top_k=99 is out of range"),
    "predict missing lens": (["predict", "--lens", "nowhere"], "does not exist"),
    "serve port": (["serve", "--port", "70000"], "use at most 65535"),
    "demo out is a file": (["demo", "--out", "a-file"], "is a file"),
    "unknown option": (["train", "--out", "o", "--bogus"], "unrecognized arguments: --bogus"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(world, capsys, case):
    argv, words = BAD_INPUTS[case]
    before = snapshot(world)
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (case, out, err)
    assert len(lines) == 1 and lines[0].startswith("tl-tunedlens") and ": error: " in lines[0], err
    assert words in lines[0], lines[0]
    assert snapshot(world) == before


def test_good_inputs_still_work(world, capsys):
    """The same world accepts the right calls (so the table above fails for its stated reason)."""
    assert main(["predict", "--text", LONG_TEXT, "--truncate", "--lens", "lens"]) == 0
    assert main(["show", "--text", "t5 t6 t7 t8 t9", "--max-tokens", "4", "--truncate", "--out", "r.html"]) == 0
    assert main(["eval", "--data", "texts", "--seq-len", "16", "--tokens", "30", "--lens", "lens", "--out", "m.json",
                 "--no-progress"]) == 0
    json.loads((world / "m.json").read_text())
    assert TunedLens.load(world / "anonymous-lens", world_model(world), allow_unverified=True) is not None
    capsys.readouterr()


def world_model(world):
    import tl_tunedlens.cli.train as cli_train

    return cli_train.load_model_from_args(None)


# --- owning the output folder ------------------------------------------------------------------
def test_lock_names_the_holder_and_overwrite_removes_only_our_files(world, capsys):
    out = world / "run"
    with OutputFolder(out):
        code = main([*TRAIN, "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and "is in use by pid" in err and "since" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # the lock taker created it, found it empty, removed it
    assert main([*TRAIN, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "lens.safetensors"]
    (out / "metrics.json").write_text("{}")           # a stale result of ours
    (out / "notes.txt").write_text("mine")              # the user's own file
    (out / ".lens.safetensors.abcd1234.tmp").write_bytes(b"x" * 10)  # an interrupted write
    first = (out / "lens.safetensors").read_bytes()
    assert main([*TRAIN, "--out", str(out)]) == 2       # holds a lens: refused, untouched
    assert (out / "lens.safetensors").read_bytes() == first
    assert main([*TRAIN, "--out", str(out), "--overwrite", "--seed", "1"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoint.pt", "config.json", "lens.safetensors", "notes.txt"]
    assert (out / "lens.safetensors").read_bytes() != first
    capsys.readouterr()


def test_stale_lock_of_a_dead_run_does_not_block(world):
    out = world / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "gone", "since": "then"}))
    (out / ".checkpoint.pt.zz_12345.tmp").write_bytes(b"partial")
    with OutputFolder(out) as folder:
        assert folder.path == out and not list(out.glob(".*.tmp"))
    assert list(out.iterdir()) == []


def test_single_file_output_checks(tmp_path):
    assert check_file_output(tmp_path / "new" / "m.json") == tmp_path / "new" / "m.json"
    assert not (tmp_path / "new").exists()  # checked, not created
    (tmp_path / "f").write_text("x")
    with pytest.raises(LensError, match="below it"):
        check_file_output(tmp_path / "f" / "m.json")
    with pytest.raises(LensError, match="is a folder"):
        check_file_output(tmp_path)


# --- broken lenses and strict metrics ------------------------------------------------------------
def test_saving_a_non_finite_lens_is_refused(model, tmp_path):
    lens = random_tuned_lens(model)
    with torch.no_grad():
        lens.translators[0].bias[2] = float("inf")
    for fmt in ("tl-tunedlens", "tuned-lens"):
        with pytest.raises(LensError, match=r"0\.bias holds 1 non-finite"):
            lens.save(tmp_path / fmt, format=fmt)
        assert not (tmp_path / fmt).exists()


def test_reference_format_checksum_and_nan(model, tmp_path):
    lens = random_tuned_lens(model)
    lens.save(tmp_path / "ref", format="tuned-lens")
    config = json.loads((tmp_path / "ref" / "config.json").read_text())
    assert len(config["params_sha256"]) == 64
    params = torch.load(tmp_path / "ref" / "params.pt", weights_only=True)
    params["1.weight"][0, 0] = float("nan")
    torch.save(params, tmp_path / "ref" / "params.pt")
    with pytest.raises(LensError, match="1.weight holds 1 non-finite"):
        TunedLens.load(tmp_path / "ref", model)
    params["1.weight"][0, 0] = 0.5
    torch.save(params, tmp_path / "ref" / "params.pt")
    with pytest.raises(LensError, match="does not match the SHA-256"):
        TunedLens.load(tmp_path / "ref", model)
    config.pop("params_sha256")  # a reference lens from elsewhere: no checksum to check
    (tmp_path / "ref" / "config.json").write_text(json.dumps(config))
    assert TunedLens.load(tmp_path / "ref", model).translators[1].weight[0, 0] == 0.5


@pytest.mark.parametrize("field, value", [("bias", "yes"), ("model_name", 3), ("unembed_fingerprint", [1, "x"]),
                                          ("residual_stream", "sideways"), ("hook_names", ["a", 3]),
                                          ("unembed_hash", "abc"), ("dtype", 32)])
def test_every_config_field_is_type_checked(model, tmp_path, field, value):
    random_tuned_lens(model).save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[field] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(LensError, match=field) as err:
        TunedLens.load(tmp_path, model)
    assert "\n" not in str(err.value)


def test_nan_in_config_json_is_refused(model, tmp_path):
    random_tuned_lens(model).save(tmp_path)
    text = (tmp_path / "config.json").read_text()
    (tmp_path / "config.json").write_text(text.replace('"training": {', '"training": {"loss": NaN, ', 1))
    with pytest.raises(LensError, match="NaN is not valid JSON"):
        TunedLens.load(tmp_path, model)


def test_non_finite_metrics_name_the_layer():
    from tl_tunedlens.analysis.metrics import check_finite_metrics
    from tl_tunedlens.artifacts.files import write_json_atomic

    row = {"kl": 1.0, "ce": 2.0, "entropy": 1.0, "top1": 0.5}
    metrics = {"baseline": {"ce": 1.0, "entropy": 1.0},
               "layers": [{"layer": 0, "logit": row, "tuned": row}, {"layer": 1, "logit": row,
                                                                     "tuned": {**row, "kl": float("nan")}}]}
    with pytest.raises(LensError, match="the tuned lens's kl at layer 1 is nan"):
        check_finite_metrics(metrics)
    with pytest.raises(LensError, match="non-finite number"):
        write_json_atomic("never.json", metrics)


# --- divergence -------------------------------------------------------------------------------------
def test_a_rising_loss_stops_training_naming_the_layer():
    """lr 1e6 scrambles the translators: the loss climbs to >4x its start and stays there (without a validation
    slice, which would put every such step back: see test_train's never-worse test)."""
    model = make_tiny_model("RMS", n_layers=2, d_model=16, d_vocab=37)
    with torch.no_grad():
        model.unembed.W_U.mul_(10.0)  # a peaked output distribution, so a scrambled lens costs many nats
    seqs = torch.randint(0, 37, (40, 16), generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(steps=8, tokens_per_step=64, lstsq_tokens=128, checkpoint_every=0, optimizer="adam", lr=1e6,
                      validation_tokens=0)
    with pytest.raises(TrainingDivergedError, match=r"the loss at layer \d at step \d rose to .* for 3 steps in a row"):
        train_lens(model, TunedLens.from_model(model), seqs, cfg, progress=False)


# --- layer and position arguments --------------------------------------------------------------------
@pytest.mark.parametrize("layer", [1.5, True, "1", 1.0, torch.tensor(1.0), torch.tensor(True)])
def test_layers_of_the_wrong_type_are_refused(model, layer):
    lens = TunedLens.from_model(model)
    with pytest.raises(LensError, match="layer must be an integer"):
        lens(torch.zeros(16), layer)
    with pytest.raises(LensError, match="must be an integer"):
        lens.hooks(LensRecord(), layers=[layer])
    assert lens.layer_index(torch.tensor(1)) == 1 and lens.layer_index(-1) == 2


@pytest.mark.parametrize("positions", [1.5, "0", [0, 1.0], torch.tensor([0.0]), torch.tensor([True]),
                                       torch.zeros(2, 2, dtype=torch.long), slice(0, 1.5)])
def test_positions_of_the_wrong_type_are_refused(model, positions):
    with pytest.raises(LensError, match="integer"):
        TunedLens.from_model(model).hooks(LensRecord(), positions=positions)


def test_out_of_range_positions_are_one_line_errors(model):
    lens = TunedLens.from_model(model)
    with pytest.raises(LensError, match="position 12 is out of range for a sequence of 5 tokens"):
        model.run_with_hooks(torch.arange(5)[None], fwd_hooks=lens.hooks(LensRecord(), positions=[0, 12]))


# --- hooks and the model ------------------------------------------------------------------------------
def test_hooks_refuse_another_model_and_accept_an_equal_one_when_named(model):
    other = make_tiny_model("RMS", n_layers=2, d_model=16, d_vocab=37, seed=5)
    twin = make_tiny_model("RMS", n_layers=2, d_model=16, d_vocab=37)  # the same weights, another instance
    tokens = torch.arange(6)[None]
    lens = random_tuned_lens(model)
    for hooks in (lambda: lens.hooks(LensRecord()), lambda: lens.hooks(intervene=1)):
        with pytest.raises(LensError, match="a model other than the one"):
            other.run_with_hooks(tokens, fwd_hooks=hooks())
    with pytest.raises(LensError, match="different unembedding"):
        lens.hooks(LensRecord(), model=other)
    record, expected = LensRecord(), LensRecord()
    twin.run_with_hooks(tokens, fwd_hooks=lens.hooks(record, model=twin))
    model.run_with_hooks(tokens, fwd_hooks=lens.hooks(expected))
    assert all(torch.equal(record.log_probs[i], expected.log_probs[i]) for i in expected.log_probs)


@pytest.mark.bridge
def test_hooks_check_the_model_on_a_bridge():
    bridge = make_tiny_model("RMS", backend="bridge", n_layers=2)
    other = make_tiny_model("RMS", backend="bridge", n_layers=2, seed=5)
    lens = random_tuned_lens(bridge)
    tokens = torch.arange(6)[None]
    record = LensRecord()
    bridge.run_with_hooks(tokens, fwd_hooks=lens.hooks(record, top_k=3))
    assert sorted(record.top_k_indices) == [0, 1, 2]
    with pytest.raises(LensError, match="a model other than the one"):
        other.run_with_hooks(tokens, fwd_hooks=lens.hooks(LensRecord()))
