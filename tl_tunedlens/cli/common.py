"""Options and helpers shared by subcommands."""

from __future__ import annotations

import argparse

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m",
                        help="'smollm2-135m' (embedded, offline) or an official TransformerLens model name "
                             "(default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="model dtype (default: %(default)s)")


def load_model_from_args(args: argparse.Namespace):
    from ..models import load_model

    return load_model(args.model, dtype=DTYPES[args.dtype], device=args.device)
