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

from ..core.backend import BACKENDS, Model
from ..models import DTYPES
from ..training.config import PRESETS, TrainConfig

if TYPE_CHECKING:
    from pathlib import Path

    from ..data import TokenData
    from ..lens import TunedLens
    from ..training import TrainResult
    from ..training.budget import BudgetPlan

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"


# --- the model ----------------------------------------------------------------------------
def add_backend_args(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--raw-weights``: which kind of TransformerLens model to load (see load_model)."""
    parser.add_argument("--backend", default="auto", choices=["auto", *BACKENDS],
                        help="hooked: HookedTransformer (TransformerLens 3.x); bridge: TransformerBridge (3.9 and 4.x); "
                             "auto: hooked where TransformerLens has it (default: %(default)s)")
    parser.add_argument("--raw-weights", action="store_true",
                        help="bridge: keep the raw Hugging Face weights (no compatibility mode)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--device`` and ``--dtype``."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="'smollm2-135m' (embedded, offline), an official TransformerLens model name, or with "
                             "--backend bridge a Hugging Face model folder or hub name (default: %(default)s)")
    add_backend_args(parser)
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="model dtype (default: %(default)s)")


def load_model_from_args(args: argparse.Namespace, name: str | None = None) -> Model:
    """The model of ``--model`` (or ``name``), ``--backend``, ``--raw-weights``, ``--device``, ``--dtype``."""
    from ..models import load_model

    return load_model(name or args.model, backend=args.backend, compatibility_mode=not args.raw_weights,
                      dtype=DTYPES[getattr(args, "dtype", "float32")], device=getattr(args, "device", "cpu"))


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


def load_data_from_args(args: argparse.Namespace, model: Model, max_tokens: int | None,
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


def budget_plan(model: Model, lens: "TunedLens", config: TrainConfig, seq_len: int,
                resume_from: "Path | None" = None) -> "BudgetPlan | None":
    """With ``--time-budget``: the plan (the checkpoint's when resuming, else a measured warm-up, printed)."""
    from ..training.budget import saved_plan
    from ..training.trainer import plan_run

    if config.time_budget is None:
        return None
    if resume_from is not None and (plan := saved_plan(resume_from)) is not None:
        return plan
    plan = plan_run(model, lens, config, seq_len)
    print(f"plan for {config.time_budget:g} s (from a {plan.rates.warmup_s:.1f} s warm-up): least-squares start on "
          f"{plan.lstsq_tokens} tokens (~{plan.predicted_fit_s:.0f} s), then {plan.steps} KL steps x "
          f"{plan.tokens_per_step} tokens (~{plan.predicted_step_s:.0f} s each)")
    return plan


def training_summary(result: "TrainResult") -> str:
    """One line: what the fit did and how long it took (and, with a budget, whether it stopped early)."""
    info = result.info
    parts = []
    if info.get("lstsq_tokens"):
        parts.append(f"least-squares start on {info['lstsq_tokens']} tokens ({info.get('lstsq_seconds', 0):.0f} s)")
    if result.losses:
        parts.append(f"{len(result.losses)} KL steps x {info['tokens_per_step']} tokens ({info['optimizer']}), "
                     f"final loss {result.losses[-1]:.4f} nats (sum over layers)")
    if "budget" in info:
        parts.append(f"time budget {info['budget']['budget_s']:g} s" +
                     (f", stopped after {len(result.losses)} of {info['budget']['steps']} planned steps"
                      if info.get("stopped_early") else ""))
    return f"fit in {result.seconds:.1f} s: " + "; ".join(parts)
