"""``tl-tunedlens eval``: per-layer metrics of the logit lens and a tuned lens on held-out text."""

from __future__ import annotations

import argparse

from ..training.config import MATMUL_DTYPES
from .common import add_data_args, add_model_args, add_progress_arg, load_data_from_args, load_model_from_args


def register(subparsers) -> None:
    """Add the ``eval`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "eval", help="evaluate the logit lens and a tuned lens per layer on held-out text",
        description="For every layer: KL(model || lens), cross-entropy vs the next token, entropy and top-1 "
                    "agreement with the model, for the logit lens and (with --lens) a tuned lens, plus the "
                    "model's own CE and entropy. Prints a table and writes JSON (nats, and bits per byte). "
                    "By default it reads the held-out documents of --data, which training never sees.",
    )
    add_model_args(parser)
    parser.add_argument("--lens", help="folder of a trained tuned lens (default: evaluate the logit lens only)")
    add_data_args(parser, default_split="heldout")
    parser.add_argument("--tokens", type=int, default=4096,
                        help="positions to score, from the first sequences in order, rounded up to whole sequences (default: %(default)s)")
    parser.add_argument("--chunk-tokens", type=int, default=512, help="tokens per logits block (default: %(default)s)")
    parser.add_argument("--matmul-dtype", default="float32", choices=tuple(MATMUL_DTYPES),
                        help="precision of the lenses' vocabulary products; with bfloat16 the first block is also "
                             "scored in float32 and the largest KL difference printed (default: %(default)s)")
    parser.add_argument("--out", help="write the metrics JSON here (default: print only)")
    add_progress_arg(parser)
    parser.set_defaults(func=run)


def eval_tokens_needed(positions: int, seq_len: int) -> int:
    """Tokens to read so that ``positions`` next-token positions can be scored (whole sequences)."""
    return -(-positions // (seq_len - 1)) * seq_len


def run(args: argparse.Namespace) -> int:
    """Run ``tl-tunedlens eval``; returns the exit status."""
    from ..analysis import evaluate_lenses
    from ..analysis.tables import metrics_table
    from ..artifacts.files import write_json_atomic
    from ..errors import LensError
    from ..lens import TunedLens

    if args.tokens < 1:
        raise LensError(f"--tokens {args.tokens} must be positive")
    if args.seq_len < 2:
        raise LensError(f"--seq-len {args.seq_len} is too short: use at least 2")
    model = load_model_from_args(args)
    tuned = TunedLens.load(args.lens, model) if args.lens else None
    data = load_data_from_args(args, model, eval_tokens_needed(args.tokens, args.seq_len))
    metrics = evaluate_lenses(model, data.sequences, tuned=tuned, bytes_per_token=data.bytes_per_token,
                              max_tokens=args.tokens, chunk_tokens=args.chunk_tokens,
                              matmul_dtype=MATMUL_DTYPES[args.matmul_dtype], progress=not args.no_progress)
    print(metrics_table(metrics))
    if "precision" in metrics:
        check = metrics["precision"]
        print(f"{check['matmul_dtype']} lens products: KL within {check['max_kl_error']:.2g} nats of float32 "
              f"(largest per-layer difference, measured on the first {check['checked_tokens']} positions)")
    if args.out:
        write_json_atomic(args.out, metrics)
        print(f"metrics written to {args.out}")
    return 0
