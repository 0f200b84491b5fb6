"""Our lens format (config.json + lens.safetensors): exact round trips, model checks, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import BACKENDS, make_tiny_model

from tl_tunedlens import LensError, TunedLens, UnembedMismatchError
from tl_tunedlens.artifacts import native

TRAINING = {"tokens_seen": 4096, "data": "shakespeare/train", "loss": 1.25, "steps": 7}


@torch.no_grad()
def trained_lens(model, seed=0, **kwargs):
    lens = TunedLens.from_model(model, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    for param in lens.parameters():
        param.copy_(0.1 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    return lens


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("process", [False, True])
def test_round_trip_is_exact(tiny_spec, tmp_path, process):
    kind, backend = tiny_spec
    model = make_tiny_model(kind, process=process, backend=backend)
    lens = trained_lens(model)
    lens.save(tmp_path / "lens", training=TRAINING)
    assert listing(tmp_path / "lens") == ["config.json", "lens.safetensors"]
    config = json.loads((tmp_path / "lens" / "config.json").read_text())
    for key, value in {"format": "tl-tunedlens", "format_version": 1, "n_layers": 3, "d_model": 16, "d_vocab": 37,
                       "layer_convention": "resid_after_n_blocks", "bias": True, "dtype": "float32",
                       "unembed_hash": lens.unembed_sha256, "training": TRAINING,
                       "residual_stream": lens.residual_stream}.items():
        assert config[key] == value, key
    assert "model_name" in config and len(config["unembed_fingerprint"]) > 0
    loaded = TunedLens.load(tmp_path / "lens", model)
    assert_same_state(lens, loaded)
    assert loaded.training_info == TRAINING and loaded.bias and loaded.n_layers == 3
    h = torch.randn(4, 16)
    for layer in range(4):
        assert torch.equal(lens(h, layer), loaded(h, layer))


def test_round_trip_bias_free_and_float64(tmp_path):
    model = make_tiny_model("RMS")
    for kwargs in ({"bias": False}, {"dtype": torch.float64}):
        lens = trained_lens(model, **kwargs)
        lens.save(tmp_path / str(kwargs))
        loaded = TunedLens.load(tmp_path / str(kwargs), model)
        assert_same_state(lens, loaded)
        assert loaded.bias == lens.bias


def test_overwrite_and_training_info_default(tmp_path):
    model = make_tiny_model("RMS")
    first = trained_lens(model, seed=1)
    first.save(tmp_path)
    second = trained_lens(model, seed=2)
    second.training_info = {"steps": 99}
    second.save(tmp_path)  # metadata from lens.training_info when not passed
    loaded = TunedLens.load(tmp_path, model)
    assert_same_state(second, loaded)
    assert loaded.training_info == {"steps": 99}
    assert listing(tmp_path) == ["config.json", "lens.safetensors"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_model_processed_differently_is_accepted(tmp_path, backend):
    """RMS models: the residual stream and the fingerprint do not depend on processing."""
    trained_lens(make_tiny_model("RMS", backend=backend)).save(tmp_path)
    lens = TunedLens.load(tmp_path, make_tiny_model("RMS", process=True, backend=backend))
    assert lens.residual_stream == "raw"


@pytest.mark.parametrize("backend", BACKENDS)
def test_raw_stream_lens_refuses_centred_model(tmp_path, backend):
    trained_lens(make_tiny_model("LN", backend=backend)).save(tmp_path)
    with pytest.raises(LensError, match="center_writing_weights=False"):
        TunedLens.load(tmp_path, make_tiny_model("LN", process=True, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_refuses_a_different_model(tmp_path, backend):
    trained_lens(make_tiny_model("RMS", backend=backend)).save(tmp_path)
    with pytest.raises(UnembedMismatchError, match="different unembedding"):
        TunedLens.load(tmp_path, make_tiny_model("RMS", seed=5, backend=backend))
    with pytest.raises(LensError, match=r"n_layers=3, d_model=16 but the model has n_layers=2, d_model=16"):
        TunedLens.load(tmp_path, make_tiny_model("RMS", n_layers=2, backend=backend))
    with pytest.raises(LensError, match=r"n_layers=3, d_model=16 but the model has n_layers=3, d_model=24"):
        TunedLens.load(tmp_path, make_tiny_model("RMS", d_model=24, backend=backend))


# --- bad input: one-line errors naming the file ----------------------------------------------
@pytest.fixture
def saved(tmp_path):
    model = make_tiny_model("RMS")
    trained_lens(model).save(tmp_path / "lens")
    return model, tmp_path / "lens"


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _rewrite_weights(folder, edit):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "lens.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "lens.safetensors"))


BAD_INPUTS = {
    "missing config": (lambda f: (f / "config.json").unlink(), "config.json is missing"),
    "missing weights": (lambda f: (f / "lens.safetensors").unlink(), "lens.safetensors is missing"),
    "invalid json": (lambda f: (f / "config.json").write_text("{oops"), "config.json is not valid JSON"),
    "unknown version": (lambda f: _edit_config(f, format_version=2), "config.json has format_version 2"),
    "missing key": (lambda f: _edit_config(f, d_model=None) or _drop_key(f, "d_model"), "lacks the key 'd_model'"),
    "other layer count": (lambda f: _edit_config(f, n_layers=4), "is for n_layers=4"),
    "truncated weights": (lambda f: (f / "lens.safetensors").write_bytes((f / "lens.safetensors").read_bytes()[:200]),
                          "lens.safetensors is truncated or not a safetensors file"),
    "extra tensor": (lambda f: _rewrite_weights(f, lambda t: t.update({"translators.9.weight": torch.zeros(2)})),
                     r"unexpected \['translators.9.weight'\]"),
    "missing tensor": (lambda f: _rewrite_weights(f, lambda t: t.pop("translators.1.bias")),
                       r"missing \['translators.1.bias'\]"),
    "wrong shape": (lambda f: _rewrite_weights(f, lambda t: t.update({"translators.0.weight": torch.zeros(16, 8)})),
                    r"translators.0.weight has shape \(16, 8\), expected \(16, 16\)"),
    "both formats": (lambda f: (f / "params.pt").write_bytes(b"x"), "holds both lens.safetensors and params.pt"),
    "bad dtype": (lambda f: _edit_config(f, dtype="int8"), "unknown dtype 'int8'"),
    "a model's config": (lambda f: (f / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 3}'),
                         "config.json is not a lens config"),
}


def _drop_key(folder, key):
    config = json.loads((folder / "config.json").read_text())
    config.pop(key)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_one_line_error_naming_the_file(saved, case):
    model, folder = saved
    damage, message = BAD_INPUTS[case]
    damage(folder)
    with pytest.raises(LensError, match=message) as info:
        TunedLens.load(folder, model)
    text = str(info.value)
    assert "\n" not in text and str(folder) in text


def test_missing_folder(tmp_path):
    with pytest.raises(LensError, match="does not exist"):
        TunedLens.load(tmp_path / "nope", make_tiny_model("RMS"))


# --- nothing written on failure ------------------------------------------------------------
def test_failed_save_writes_nothing(tmp_path, monkeypatch):
    model = make_tiny_model("RMS")
    lens = trained_lens(model)

    def exploding_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(native, "save_file", exploding_save_file)
    with pytest.raises(OSError, match="disk full"):
        lens.save(tmp_path / "new")
    assert listing(tmp_path) == []  # no folder, no temp files
    monkeypatch.undo()

    old = trained_lens(model, seed=9)
    old.save(tmp_path / "old")
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    monkeypatch.setattr(native, "save_file", exploding_save_file)
    with pytest.raises(OSError):
        lens.save(tmp_path / "old")
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before


def test_invalid_save_requests_write_nothing(tmp_path):
    lens = trained_lens(make_tiny_model("RMS"))
    with pytest.raises(LensError, match="unknown lens format 'onnx'"):
        lens.save(tmp_path / "a", format="onnx")
    with pytest.raises(TypeError):
        lens.save(tmp_path / "b", training={"bad": object()})
    (tmp_path / "file").write_text("x")
    with pytest.raises(LensError, match="it is a file, not a folder"):
        lens.save(tmp_path / "file")
    lens.save(tmp_path / "c", format="tuned-lens")
    with pytest.raises(LensError, match="already holds params.pt"):
        lens.save(tmp_path / "c")
    assert listing(tmp_path) == ["c", "file"]
    assert listing(tmp_path / "c") == ["config.json", "params.pt"]


# --- reference-format bad input ------------------------------------------------------------
@pytest.fixture
def saved_reference(tmp_path):
    model = make_tiny_model("RMS")
    trained_lens(model).save(tmp_path / "ref", format="tuned-lens")
    return model, tmp_path / "ref"


def _torch_edit(folder, edit):
    state = torch.load(folder / "params.pt", weights_only=True)
    edit(state)
    torch.save(state, folder / "params.pt")


REF_BAD_INPUTS = {
    "missing params": (lambda f: (f / "params.pt").unlink(), "params.pt is missing"),
    "truncated params": (lambda f: (f / "params.pt").write_bytes((f / "params.pt").read_bytes()[:300]),
                         "params.pt is truncated or not a torch file"),
    "other layer count": (lambda f: _edit_config(f, num_hidden_layers=2), "is for n_layers=2"),
    "extra tensor": (lambda f: _torch_edit(f, lambda s: s.update({"3.weight": torch.zeros(16, 16)})),
                     r"unexpected \['3.weight'\]"),
    "wrong shape": (lambda f: _torch_edit(f, lambda s: s.update({"1.bias": torch.zeros(3)})),
                    r"1.bias has shape \(3,\), expected \(16,\)"),
    "other lens type": (lambda f: _edit_config(f, lens_type="logit_lens"), "lens_type 'logit_lens'"),
    "bad d_model": (lambda f: _edit_config(f, d_model="16"), "d_model must be a positive integer"),
}


@pytest.mark.parametrize("case", list(REF_BAD_INPUTS))
def test_reference_bad_input_one_line_error(saved_reference, case):
    model, folder = saved_reference
    damage, message = REF_BAD_INPUTS[case]
    damage(folder)
    with pytest.raises(LensError, match=message) as info:
        TunedLens.load(folder, model)
    assert "\n" not in str(info.value) and str(folder) in str(info.value)
