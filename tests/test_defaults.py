"""A default is defined once: the settings dataclasses (``TrainConfig``, ``DataConfig``) and the few named
constants they read are the only places a default value is written; functions, flags and prose take them
from there, or this test catches the drift."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tl_tunedlens.core.vocab import CHUNK_TOKENS
from tl_tunedlens.data.config import HELD_OUT, SEQ_LEN, SPLIT_SEED, DataConfig
from tl_tunedlens.models import DEFAULT_MODEL
from tl_tunedlens.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tl_tunedlens"
#: parameter names whose default must be a named constant (never a literal) wherever a function takes them
SETTINGS = ("seq_len", "held_out", "split_seed", "chunk_tokens", "ridge", "damping", "lstsq_tokens")
#: where the model name may be written as a literal: its definition
MODEL_NAME_HOME = PACKAGE / "models" / "embedded.py"


def _literal_defaults(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            for arg, default in pairs:
                if arg.arg in SETTINGS and isinstance(default, ast.Constant) and default.value is not None:
                    yield f"{node.name}({arg.arg}={default.value!r})"


def test_functions_take_setting_defaults_from_their_one_definition():
    found = []
    for module in PACKAGE.rglob("*.py"):
        for where in _literal_defaults(ast.parse(module.read_text())):
            found.append(f"{module.relative_to(ROOT)}: {where}")
    assert not found, "use the named default (TrainConfig / DataConfig / core.vocab constants): " + "; ".join(found)


def test_the_model_name_is_written_once_in_code():
    found = []
    for module in PACKAGE.rglob("*.py"):
        if module == MODEL_NAME_HOME:
            continue
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Constant) and node.value == DEFAULT_MODEL:
                found.append(str(module.relative_to(ROOT)))
    assert not found, f"write DEFAULT_MODEL, not {DEFAULT_MODEL!r}: {found}"


def test_the_dataclasses_hold_the_named_defaults():
    assert TrainConfig().chunk_tokens == CHUNK_TOKENS
    data = DataConfig()
    assert (data.held_out, data.split_seed) == (HELD_OUT, SPLIT_SEED) and data.resolved().seq_len == SEQ_LEN


def _commas(n: int) -> str:
    return f"{n:,}"


def test_defaults_quoted_in_prose_are_the_definitions():
    """The laptop preset's least-squares sample, as the README, the docs and the CLI help quote it."""
    tokens = TrainConfig().lstsq_tokens
    for page in ("README.md", "docs/tutorials/training_and_evaluating_lenses.md", "docs/index.md"):
        text = (ROOT / page).read_text()
        for quoted in re.findall(r"least-squares start (?:alone )?on ([\d,]+) tokens", text):
            assert quoted.replace(",", "") == str(tokens), f"{page} quotes {quoted} tokens; TrainConfig says {_commas(tokens)}"
        for quoted in re.findall(r"closed-form least-squares start on ([\d,]+) tokens", text):
            assert quoted.replace(",", "") == str(tokens), f"{page} quotes {quoted}; TrainConfig says {_commas(tokens)}"
