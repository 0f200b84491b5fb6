"""Options, constants and helpers shared by the subcommands.

The training flags are generated from :class:`~tl_tunedlens.training.config.TrainConfig`'s fields
(names, types, choices, help and defaults), so the CLI and the library can never disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import TYPE_CHECKING, Any

from ..core.backend import BACKENDS, Model
from ..models import DTYPES
from ..training.config import PRESETS, TrainConfig, field_kind, option_problem

if TYPE_CHECKING:
    from pathlib import Path

    from ..data import TokenData
    from ..lens import TunedLens
    from ..training import TrainResult
    from ..training.budget import BudgetPlan
    from ..core.distributed import Dist

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_SEQ_LEN = 256
DEFAULT_TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"


# --- numeric options ---------------------------------------------------------------------------
def option_type(kind: type, **rules: Any):
    """An argparse ``type`` that parses ``kind`` (``int``/``float``) and checks ``rules`` (``min``, ``max``,
    ``positive``, ``below``, ``unit``; see :func:`~tl_tunedlens.training.config.option_problem`), so a bad
    value is a one-line usage error before anything loads."""
    if kind not in (int, float):
        return kind

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a {'whole' if kind is int else 'finite'} number") from None
        problem = option_problem(value, rules, kind)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"{text}: {problem}")
        return value

    parse.__name__ = kind.__name__
    return parse


# --- the model ----------------------------------------------------------------------------
def add_backend_args(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--raw-weights``: which kind of TransformerLens model to load (see load_model)."""
    parser.add_argument("--backend", default="auto", choices=["auto", *BACKENDS],
                        help="hooked: HookedTransformer (TransformerLens 3.x); bridge: TransformerBridge (3.9 and 4.x); "
                             "auto: hooked where TransformerLens has it (default: %(default)s)")
    parser.add_argument("--raw-weights", action="store_true",
                        help="bridge: keep the raw Hugging Face weights (no compatibility mode)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--dtype`` and ``--n-devices``."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="'smollm2-135m' (embedded, offline), an official TransformerLens model name, or with "
                             "--backend bridge a Hugging Face model folder or hub name (default: %(default)s)")
    add_backend_args(parser)
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                        help="dtype of the frozen model, e.g. bfloat16 on a GPU; lenses stay float32 (default: %(default)s)")
    parser.add_argument("--n-devices", type=option_type(int, min=1, unit="devices"), default=1,
                        help="split the frozen model's blocks over this many CUDA devices (default: %(default)s)")


def load_model_from_args(args: argparse.Namespace, name: str | None = None, *, sae_transformer: bool = False) -> Model:
    """The model of ``--model`` (or ``name``), ``--backend``, ``--raw-weights``, ``--device``, ``--dtype``,
    ``--n-devices`` (as sae-lens's model class with ``sae_transformer``)."""
    from ..models import load_model

    return load_model(name or args.model, backend=args.backend, compatibility_mode=not args.raw_weights,
                      dtype=DTYPES[getattr(args, "dtype", "float32")], device=getattr(args, "device", "cpu"),
                      n_devices=getattr(args, "n_devices", 1), sae_transformer=sae_transformer)


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
    """``--dist-timeout``: how long a rank of a ``torchrun`` run waits for the others."""
    from ..core.distributed import DEFAULT_TIMEOUT_S

    parser.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="under torchrun: seconds a rank waits for the others before the run stops with an "
                             "error (default: %(default)s)")


def start_distributed(args: argparse.Namespace) -> "Dist":
    """Join the ``torchrun`` process group when launched by it (else the one-process :class:`~tl_tunedlens.core.distributed.Dist`);
    under torchrun ``args.device`` becomes this rank's device."""
    from ..errors import LensError
    from ..core.distributed import init_distributed

    dist = init_distributed(args.device, args.dist_timeout)
    if dist.active:
        if args.n_devices > 1:
            raise LensError("--n-devices splits one model over devices; under torchrun every rank holds a whole "
                            "model: drop one of them")
        args.device = dist.device
    return dist


def add_overwrite_arg(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``: replace an earlier lens and results in ``--out`` (see :class:`~tl_tunedlens.artifacts.outdir.OutputFolder`)."""
    parser.add_argument("--overwrite", action="store_true",
                        help="--out may hold an earlier lens or results: remove them (only the files this command "
                             "writes) and write the new ones")


def add_truncate_arg(parser: argparse.ArgumentParser) -> None:
    """``--truncate``: keep the last tokens of a text that is too long, instead of an error."""
    parser.add_argument("--truncate", action="store_true",
                        help="a text longer than the limit keeps its last tokens (default: an error)")


def check_lens_arg(path: str | None) -> None:
    """The model-free checks of a ``--lens`` folder (:func:`~tl_tunedlens.artifacts.folder.check_folder`), before any model loads."""
    from ..artifacts.folder import check_folder

    if path is not None:
        check_folder(path)


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
    group.add_argument("--held-out", type=option_type(float, min=0.0, below=1.0), default=0.1,
                       help="fraction of documents held out from training (default: %(default)s)")
    group.add_argument("--split-seed", type=option_type(int), default=0, help="seed of the document split (default: %(default)s)")
    group.add_argument("--seq-len", type=option_type(int, min=2, unit="tokens"), default=None,
                       help=f"tokens per sequence, <= the model's n_ctx (default: {DEFAULT_SEQ_LEN}, or a token "
                            "store's own; the paper used 2048)")


def check_data_arg(args: argparse.Namespace) -> None:
    """The model-free checks of ``--data`` (a missing file or folder, a damaged token store), before any model loads."""
    from ..data.documents import check_source
    from ..data.store import check_store, is_store

    if is_store(args.data):
        check_store(args.data, split=args.split)
    else:
        check_source(args.data)


def check_layers_arg(model_name: str, hooks: "str | list[str] | None", layers: "list[int] | None") -> None:
    """``--layers`` against the model's layer count when it can be read without loading the model
    (:func:`~tl_tunedlens.models.peek_n_layers`); otherwise the trainer checks it after the load."""
    from ..core.layers import lens_hook_names, translator_layers
    from ..models import peek_n_layers

    n_layers = peek_n_layers(model_name) if layers is not None else None
    if n_layers is not None:
        translator_layers(layers, len(lens_hook_names(n_layers, hooks)) - 1)


def resolve_seq_len(args: argparse.Namespace) -> int:
    """``args.seq_len`` made definite: a token store's own (``--seq-len`` must agree), else the default."""
    from ..data.store import is_store, read_manifest

    if is_store(args.data):
        stored = read_manifest(args.data)["seq_len"]
        if args.seq_len not in (None, stored):
            from ..errors import LensError

            raise LensError(f"{args.data} holds sequences of {stored} tokens, not --seq-len {args.seq_len}: "
                            "drop --seq-len or tokenize again")
        args.seq_len = stored
    elif args.seq_len is None:
        args.seq_len = DEFAULT_SEQ_LEN
    return args.seq_len


def load_data_from_args(args: argparse.Namespace, model: Model, max_tokens: int | None,
                        split: str | None = None) -> "TokenData":
    """Tokens of ``--data`` (its ``--split``, or ``split``), at most ``max_tokens`` of them. A token store
    (``tl-tunedlens tokenize``) is memory-mapped, not read (``max_tokens``: only its first sequences)."""
    from ..data import load_tokens
    from ..data.store import is_store, open_store

    if is_store(args.data):
        return open_store(args.data, model.tokenizer, seq_len=args.seq_len, split=split or args.split,
                          max_tokens=max_tokens)
    return load_tokens(args.data, model.tokenizer, args.seq_len, split=split or args.split, held_out=args.held_out,
                       seed=args.split_seed, text_field=args.text_field, hf_split=args.hf_split,
                       max_tokens=max_tokens, n_ctx=model.cfg.n_ctx)


# --- training settings, from TrainConfig ------------------------------------------------------
def add_train_config_args(parser: argparse.ArgumentParser) -> None:
    """``--preset`` plus one flag per :class:`~tl_tunedlens.training.config.TrainConfig` field (default: the preset's value)."""
    group = parser.add_argument_group("training (defaults: the laptop preset)")
    group.add_argument("--preset", default="laptop", choices=sorted(PRESETS),
                       help="laptop: least-squares start + a few Adam KL steps, minutes on a CPU; paper: "
                            "Belrose et al. 2023 (identity start, 250 SGD steps x 2^18 tokens); flags below "
                            "override it (default: %(default)s)")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind, is_list, _ = field_kind(hints[f.name])
        help_text = f.metadata["help"]
        if "(default:" not in help_text:
            paper = PRESETS["paper"].get(f.name, f.default)
            also = f"; paper: {paper}" if paper != f.default else ""
            help_text += f" (default: {'all' if f.default is None else f.default}{also})"
        rules = {k: v for k, v in f.metadata.items() if k != "choices"}  # argparse checks choices itself
        group.add_argument(f.metadata.get("flag", "--" + f.name.replace("_", "-")), dest=f.name,
                           type=option_type(kind, **rules), nargs="+" if is_list else None,
                           choices=f.metadata.get("choices"), default=None, help=help_text)


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
    print(f"plan for {config.time_budget:g} s of fitting (from a {plan.rates.warmup_s:.1f} s warm-up; loading and "
          f"saving come on top): least-squares start on {plan.lstsq_tokens} tokens (~{plan.predicted_fit_s:.0f} s), "
          f"then {plan.steps} KL steps x {plan.tokens_per_step} tokens (~{plan.predicted_step_s:.0f} s each)")
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
