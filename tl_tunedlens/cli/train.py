"""``tl-tunedlens train``: train a tuned lens on text and save it to a folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (add_data_args, add_model_args, add_progress_arg, add_train_config_args, budget_plan,
                     load_data_from_args, load_model_from_args, train_config_from_args, training_summary)


def register(subparsers) -> None:
    """Add the ``train`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "train", help="train a tuned lens on text and save it",
        description="Train one affine translator per layer so that the lens's next-token distribution matches "
                    "the model's own final one (forward KL, summed over layers). Writes config.json and "
                    "lens.safetensors into --out, plus checkpoint.pt every --checkpoint-every steps.",
    )
    add_model_args(parser)
    parser.add_argument("--out", required=True, help="output folder for the lens and its checkpoint")
    add_data_args(parser, default_split="train")
    add_train_config_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt with the same options")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="tokens to read from the data (default: what the settings need, see TrainConfig.token_budget)")
    add_progress_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tl-tunedlens train``; returns the exit status."""
    from ..artifacts.checkpoint import CHECKPOINT_NAME
    from ..errors import LensError
    from ..lens import TunedLens
    from ..training import train_lens

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LensError(f"--out {out} is a file: pass a folder path")
    if not args.resume and (out / CHECKPOINT_NAME).exists():
        raise LensError(f"{out} already holds a training checkpoint: pass --resume to continue it or another --out")
    config = train_config_from_args(args)
    config.check(args.seq_len)
    model = load_model_from_args(args)
    lens = TunedLens.from_model(model)
    plan = budget_plan(model, lens, config, args.seq_len, out if args.resume else None)
    planned = plan.apply(config) if plan is not None else config
    data = load_data_from_args(args, model, args.max_tokens or planned.token_budget(args.seq_len))
    print(f"model: {model.cfg.model_name} ({model.cfg.n_layers} layers); data: {data.source}, "
          f"{len(data)} x {data.seq_len} tokens from {len(data.documents)} documents")
    result = train_lens(model, lens, data.sequences, config, out_dir=out, resume=args.resume,
                        progress=not args.no_progress, data_info=data.info(), plan=plan)
    lens.save(out, training=result.info)
    print(f"{training_summary(result)}; lens saved to {out}")
    return 0
