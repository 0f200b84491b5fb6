"""Options, constants and helpers shared by the subcommands.

The training flags are generated from :class:`~tl_tunedlens.training.config.TrainConfig`'s fields
(names, types, choices, help and defaults), so the CLI and the library can never disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import TYPE_CHECKING, Any

from ..models import DTYPES
from ..training.config import PRESETS, TrainConfig

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from ..data import TokenData

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"


# --- the model ----------------------------------------------------------------------------
def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--device`` and ``--dtype``."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="'smollm2-135m' (embedded, offline) or an official TransformerLens model name "
                             "(default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="model dtype (default: %(default)s)")


def load_model_from_args(args: argparse.Namespace) -> "HookedTransformer":
    """The model named by ``--model`` with ``--device`` and ``--dtype``."""
    from ..models import load_model

    return load_model(args.model, dtype=DTYPES[args.dtype], device=args.device)


def add_progress_arg(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``."""
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


# --- the data -----------------------------------------------------------------------------
def add_data_args(parser: argparse.ArgumentParser, default_split: str) -> None:
    """Options choosing the text and its train / held-out split (shared by train and eval)."""
    group = parser.add_argument_group("data")
    group.add_argument("--data", default="shakespeare",
                       help="'shakespeare' (embedded), a .txt file, a folder of .txt files, a .jsonl file, "
                            "or a Hugging Face dataset name[:config] (needs the hub) (default: %(default)s)")
    group.add_argument("--text-field", default="text", help="field holding the text in .jsonl / datasets (default: %(default)s)")
    group.add_argument("--hf-split", default="train", help="split of a Hugging Face dataset (default: %(default)s)")
    group.add_argument("--split", default=default_split, choices=["train", "heldout", "all"],
                       help="part of the documents to use; train and heldout never share a document (default: %(default)s)")
    group.add_argument("--held-out", type=float, default=0.1,
                       help="fraction of documents held out from training (default: %(default)s)")
    group.add_argument("--split-seed", type=int, default=0, help="seed of the document split (default: %(default)s)")
    group.add_argument("--seq-len", type=int, default=256,
                       help="tokens per sequence, <= the model's n_ctx (default: %(default)s; the paper used 2048)")


def load_data_from_args(args: argparse.Namespace, model: "HookedTransformer", max_tokens: int | None,
                        split: str | None = None) -> "TokenData":
    """Tokens of ``--data`` (its ``--split``, or ``split``), at most ``max_tokens`` of them."""
    from ..data import load_tokens

    return load_tokens(args.data, model.tokenizer, args.seq_len, split=split or args.split, held_out=args.held_out,
                       seed=args.split_seed, text_field=args.text_field, hf_split=args.hf_split,
                       max_tokens=max_tokens, n_ctx=model.cfg.n_ctx)


# --- training settings, from TrainConfig ------------------------------------------------------
def _arg_type(hint: Any) -> tuple[type, str | None]:
    """The argparse ``type`` and ``nargs`` of a TrainConfig field's type hint."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] if isinstance(hint, types.UnionType) else [hint]
    kind = args[0]
    if typing.get_origin(kind) is list:
        return typing.get_args(kind)[0], "+"
    return kind, None


def add_train_config_args(parser: argparse.ArgumentParser) -> None:
    """``--preset`` plus one flag per :class:`~tl_tunedlens.training.config.TrainConfig` field (default: the preset's value)."""
    group = parser.add_argument_group("training (defaults: the laptop preset)")
    group.add_argument("--preset", default="laptop", choices=sorted(PRESETS),
                       help="laptop: least-squares start + a few Adam KL steps, minutes on a CPU; paper: "
                            "Belrose et al. 2023 (identity start, 250 SGD steps x 2^18 tokens); flags below "
                            "override it (default: %(default)s)")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind, nargs = _arg_type(hints[f.name])
        help_text = f.metadata["help"]
        if "(default:" not in help_text:
            paper = PRESETS["paper"].get(f.name, f.default)
            also = f"; paper: {paper}" if paper != f.default else ""
            help_text += f" (default: {'all' if f.default is None else f.default}{also})"
        group.add_argument(f.metadata.get("flag", "--" + f.name.replace("_", "-")), dest=f.name, type=kind,
                           nargs=nargs, choices=f.metadata.get("choices"), default=None, help=help_text)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset with every flag the user gave applied (validated by TrainConfig)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    return TrainConfig.preset(args.preset, **given)
