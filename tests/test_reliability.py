"""Nothing lost, nothing silent, round two: a permanent table of hostile cases, each asserting the exit code,
the one line the user reads, and what is on disk afterwards.

The CLI runs on the tiny model of ``test_safety``'s world (patched into every command): in a forked child
where a case kills it or limits its file size (:mod:`forking`), in-process otherwise."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from conftest import tiny_tokenizer
from forking import run_forked
from test_safety import LONG_TEXT, TRAIN, model, snapshot, world  # noqa: F401  (fixtures)
from tl_tunedlens import TunedLens
from tl_tunedlens.artifacts.checkpoint import CHECKPOINT_NAME
from tl_tunedlens.artifacts.outdir import STAGING_NAME
from tl_tunedlens.cli import main

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs os.fork and os.pidfd_open (Linux)")

CKPT_EVERY_STEP = [*TRAIN, "--checkpoint-every", "1"]


def _in_process(argv: list[str]) -> tuple[int, str, str]:
    """``cli.main(argv)`` here, its output captured."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
    return code, out.getvalue(), err.getvalue()


def _lens_files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in ("config.json", "lens.safetensors")}


# --- the cases' set-ups and checks ------------------------------------------------------------------------
def _overwrite_killed(world: Path) -> tuple[int, str, str]:
    """``train --out lens --overwrite``, SIGKILLed inside its second checkpoint write."""
    world.joinpath("before.json").write_text(json.dumps({k: v.hex() for k, v in _lens_files(world / "lens").items()}))
    return run_forked([*CKPT_EVERY_STEP, "--out", "lens", "--overwrite"], kill=("fsync", 2))


def _overwrite_killed_after(world: Path) -> None:
    before = {k: bytes.fromhex(v) for k, v in json.loads(world.joinpath("before.json").read_text()).items()}
    assert _lens_files(world / "lens") == before                       # the old lens survived the kill
    staged = torch.load(world / "lens" / STAGING_NAME / CHECKPOINT_NAME, weights_only=True)
    assert staged["step"] == 1                                         # and the new run's checkpoint
    code, out, err = _in_process([*CKPT_EVERY_STEP, "--out", "lens", "--resume"])
    assert code == 0, err
    assert "replacing the earlier" in out
    assert _lens_files(world / "lens") != before
    assert sorted(p.name for p in (world / "lens").iterdir()) == ["checkpoint.pt", "config.json", "lens.safetensors"]
    assert TunedLens.load(world / "lens", _world_model()).training_info["steps"] == 2


def _world_model():
    import tl_tunedlens.cli.train as cli_train

    return cli_train.load_model_from_args(None)


def _drop_weights_sha(world: Path) -> None:
    config = json.loads((world / "lens" / "config.json").read_text())
    del config["weights_sha256"]
    (world / "lens" / "config.json").write_text(json.dumps(config))


def _store(world: Path, edit: Callable[[Path], None]) -> None:
    from tl_tunedlens.data import load_documents, split_documents, write_store

    docs = split_documents(load_documents(world / "texts"), "train")
    write_store(docs, tiny_tokenizer(), 16, world / "store", split={"data": "texts", "split": "train"})
    edit(world / "store" / "tokens.npy")


def _edit_one_id(path: Path) -> None:
    array = np.load(path, mmap_mode="r+")
    array[1, 3] = (int(array[1, 3]) + 1) % 30
    array.flush()


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 7)


def _list_checkpoint(world: Path) -> None:
    (world / "ckpt").mkdir()
    torch.save([1, 2, 3], world / "ckpt" / CHECKPOINT_NAME)


def _hf_folder(world: Path) -> None:
    """A model folder whose config.json says 2 layers, so --layers is checked before any load."""
    (world / "tinyhf").mkdir()
    (world / "tinyhf" / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))


def _no_load(world: Path) -> None:
    assert not (world / "loaded").exists(), "the model was loaded before the option check"


@dataclass
class Case:
    """One hostile input: ``argv`` (or ``run(world)``), the exit code, words of the one line (on stderr, or
    ``stdout=True``), ``setup(world)`` before and ``after(world)`` on disk (default: nothing changed)."""

    argv: list[str] | None = None
    code: int = 2
    words: str = ""
    setup: Callable[[Path], None] | None = None
    run: Callable[[Path], tuple[int, str, str]] | None = None
    after: Callable[[Path], None] | None = None
    stdout: bool = False
    fsize: int | None = None


CASES = {
    "overwrite killed mid-run keeps the old lens and a resumable checkpoint": Case(
        run=_overwrite_killed, code=-9, after=_overwrite_killed_after),
    "a config without weights_sha256 is refused": Case(
        ["eval", "--data", "texts", "--seq-len", "16", "--lens", "lens"], words="records no weights_sha256",
        setup=_drop_weights_sha),
    "a token store with one id edited is refused": Case(
        [*TRAIN, "--data", "store", "--out", "o"], words="do not match the manifest's SHA-256",
        setup=lambda w: _store(w, _edit_one_id)),
    "a truncated token store is one line, before the model loads": Case(
        [*TRAIN, "--data", "store", "--out", "o"], words="(truncated): the store is damaged",
        setup=lambda w: _store(w, _truncate), after=_no_load),
    "resume from a checkpoint holding a list": Case(
        [*TRAIN, "--out", "ckpt", "--resume"], words="holds a list, not a tl-tunedlens training checkpoint",
        setup=_list_checkpoint),
    "a full disk during a checkpoint write is exit 1": Case(
        [*CKPT_EVERY_STEP, "--out", "full"], code=1, words="writing the checkpoint failed", fsize=1500),
    "a full disk while saving the lens is exit 1 and leaves no half-written lens": Case(
        [*TRAIN, "--checkpoint-every", "0", "--out", "full"], code=1, words="writing lens.safetensors failed",
        fsize=1500),
    "--layers 99 is checked before the model loads": Case(
        [*TRAIN, "--model", "tinyhf", "--out", "o", "--layers", "99"],
        words="layer 99 is out of range: train translators 0..1 (or -3..-2", setup=_hf_folder, after=_no_load),
    "--layers -1 names the output, which has no translator": Case(
        [*TRAIN, "--model", "tinyhf", "--out", "o", "--layers", "-1"],
        words="the model's own output, which has no translator: train translators 0..1", setup=_hf_folder,
        after=_no_load),
    "--truncate says what it kept and dropped": Case(
        ["show", "--text", LONG_TEXT, "--truncate", "--out", "r.html"], code=0, stdout=True,
        words="--truncate kept the last 32 of ",
        after=lambda w: _page_says_truncated(w / "r.html")),
}


def _page_says_truncated(page: Path) -> None:
    import re

    found = re.search(r"--truncate kept the last 32 of (\d+) tokens \(the first (\d+) were dropped\)", page.read_text())
    assert found and int(found.group(1)) - int(found.group(2)) == 32


@pytest.fixture
def loads(world, monkeypatch):
    """Record (as the file ``loaded``) that a command loaded its model."""
    import importlib

    model_ = _world_model()

    def load(args, name=None, **kwargs):
        (world / "loaded").write_text("")
        return model_

    for name in ("train", "eval", "show"):
        monkeypatch.setattr(importlib.import_module(f"tl_tunedlens.cli.{name}"), "load_model_from_args", load)
    return world


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_case(loads, case):
    world = loads
    spec = CASES[case]
    if spec.setup is not None:
        spec.setup(world)
    before = snapshot(world)
    if spec.run is not None:
        code, out, err = spec.run(world)
    elif spec.fsize is not None:
        code, out, err = run_forked(spec.argv, fsize=spec.fsize)
    else:
        code, out, err = _in_process(spec.argv)
    assert code == spec.code, (case, out, err)
    if spec.words:
        if spec.stdout:
            assert spec.words in out, out
        else:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("tl-tunedlens") and ": error: " in lines[0], err
            assert spec.words in lines[0], lines[0]
    if spec.after is not None:
        spec.after(world)
    if spec.code != 0 and spec.run is None:   # a refusal or failure leaves every file as it was
        after = {k: v for k, v in snapshot(world).items() if k != "loaded"}
        assert after == {k: v for k, v in before.items() if k != "loaded"}


# --- cases outside the command line ----------------------------------------------------------------------
def test_the_explorer_answers_400_for_a_lone_surrogate():
    from werkzeug import test as werkzeug_test

    from test_app import tiny_model_with_tokenizer
    from tl_tunedlens.app.explorer import Explorer
    from tl_tunedlens.app.server import ExplorerApp

    app = ExplorerApp(Explorer(tiny_model_with_tokenizer()), log=lambda text: None)
    response = werkzeug_test.Client(app).post("/api/analyze", data='{"text": "hi \\ud800 there"}',
                                              content_type="application/json")
    assert response.status_code == 400 and "lone UTF-16 surrogate" in response.json["error"]


def test_an_sae_of_another_width_is_one_line():
    pytest.importorskip("sae_lens", reason="sae-lens is not installed (extra [sae]; TransformerLens 3.x only)")
    from conftest import make_tiny_model, random_tuned_lens
    from test_sae import tiny_sae
    from tl_tunedlens import LensError, as_sae_transformer
    from tl_tunedlens.analysis.sae import ablate_latent, splice_effect
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    base = make_tiny_model("RMS", n_layers=4, d_model=16)
    model, lens = as_sae_transformer(base), random_tuned_lens(base)
    wide = TopKSAE(TopKSAEConfig(d_in=24, d_sae=32, k=4, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_post")))
    tokens = torch.randint(0, 37, (1, 6), generator=torch.Generator().manual_seed(0))
    for call in (lambda: splice_effect(lens, model, wide, tokens), lambda: ablate_latent(lens, model, wide, tokens, 0)):
        with pytest.raises(LensError, match=r"d_in=24 but the model's residual stream has d_model=16") as err:
            call()
        assert "\n" not in str(err.value)
    splice_effect(lens, model, tiny_sae(), tokens)   # the right width works


def test_torchrun_survivor_prints_the_one_line_with_the_resume_hint(tmp_path):
    """Two ranks under the real launcher; rank 1 SIGKILLs itself in step 2: the surviving rank's one line
    names itself and says to rerun with --resume; the last checkpoint is intact and resumes."""
    import subprocess

    from test_distributed import _free_ports

    script = Path(__file__).with_name("torchrun_rank.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
              str(_free_ports()[0]), str(script), str(tmp_path)]
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("tl-tunedlens train: error:")]
    assert len(ours) == 1 and "rank 0 of 2" in ours[0] and "rerun with --resume" in ours[0], done.stderr[-3000:]
    state = torch.load(tmp_path / "out" / CHECKPOINT_NAME, weights_only=True)
    assert state["step"] == 2


def test_the_launchers_sigterm_becomes_the_one_line_error(monkeypatch):
    """torchrun stops the surviving ranks with SIGTERM (when they are not blocked in a collective, which
    fails by itself, as above): the rank then raises the same one-line error with the resume hint."""
    import signal

    from tl_tunedlens.core.distributed import DistributedError, fail_fast_on_sigterm

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    previous = signal.getsignal(signal.SIGTERM)
    try:
        fail_fast_on_sigterm()
        with pytest.raises(DistributedError, match=r"rank 0 of 2 was stopped by the launcher .* rerun with --resume"):
            signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL   # a second SIGTERM would end it at once
    finally:
        signal.signal(signal.SIGTERM, previous)
