"""``tl-tunedlens eval``: per-layer metrics of the logit lens and a tuned lens on held-out text
(under ``torchrun`` each rank scores its share of the tokens; rank 0 prints and writes)."""

from __future__ import annotations

import argparse

from ..core.vocab import CHUNK_TOKENS, MATMUL_DTYPES
from .common import (add_distributed_args, add_model_args, add_progress_arg, check_lens_arg, load_model_from_args,
                     start_distributed)
from .options import add_data_args, data_config_from_args, option_type


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
    parser.add_argument("--tokens", type=option_type(int, min=1, unit="tokens"), default=4096,
                        help="positions to score, from the first sequences in order, rounded up to whole sequences (default: %(default)s)")
    parser.add_argument("--chunk-tokens", type=option_type(int, min=1, unit="tokens"), default=CHUNK_TOKENS, help="tokens per logits block (default: %(default)s)")
    parser.add_argument("--matmul-dtype", default="float32", choices=tuple(MATMUL_DTYPES),
                        help="precision of the lenses' vocabulary products; with bfloat16 the first block is also "
                             "scored in float32 and the largest KL difference printed (default: %(default)s)")
    parser.add_argument("--transfer", action="store_true",
                        help="also measure layer transfer (needs --lens): KL(model || translator j on the residual of "
                             "layer i) for every pair of --transfer-layers, into the JSON under \"transfer\"")
    parser.add_argument("--transfer-layers", type=int, nargs="+", default=None, metavar="LAYER",
                        help="lens layers of the transfer matrix (default: all; it costs layers² vocabulary products)")
    parser.add_argument("--out", help="write the metrics JSON here (default: print only)")
    parser.add_argument("--report", help="write an offline HTML page of the metric curves (and the transfer heatmap) here")
    add_distributed_args(parser)
    add_progress_arg(parser)
    parser.set_defaults(func=run)


def eval_tokens_needed(positions: int, seq_len: int) -> int:
    """Tokens to read so that ``positions`` next-token positions can be scored (whole sequences)."""
    return -(-positions // (seq_len - 1)) * seq_len


def run(args: argparse.Namespace) -> int:
    """Run ``tl-tunedlens eval``; returns the exit status."""
    from ..analysis import evaluate_lenses
    from ..analysis.tables import metrics_table, transfer_table
    from ..analysis.transfer import transfer_matrix
    from ..viz.experiments import write_metrics_page
    from ..artifacts.files import write_json_atomic
    from ..artifacts.outdir import check_file_output
    from ..errors import LensError
    from ..lens import TunedLens

    if args.out:
        check_file_output(args.out)
    check_lens_arg(args.lens)
    if (args.transfer or args.transfer_layers) and not args.lens:
        raise LensError("--transfer measures a tuned lens's translators: pass --lens DIR")
    data_config = data_config_from_args(args)
    data_config.check()
    dist = start_distributed(args)
    try:
        model = load_model_from_args(args)
        tuned = TunedLens.load(args.lens, model) if args.lens else None
        data = data_config.load(model.tokenizer, max_tokens=eval_tokens_needed(args.tokens, data_config.seq_len),
                                n_ctx=model.cfg.n_ctx)
        metrics = evaluate_lenses(model, data.sequences, tuned=tuned, bytes_per_token=data.bytes_per_token,
                                  max_tokens=args.tokens, chunk_tokens=args.chunk_tokens,
                                  matmul_dtype=MATMUL_DTYPES[args.matmul_dtype], progress=not args.no_progress,
                                  dist=dist)
    except BaseException:
        dist.abort()   # the other ranks fail at their all-reduce instead of waiting for the timeout
        raise
    dist.close()
    if not dist.is_main:
        return 0
    if args.transfer or args.transfer_layers:   # rank 0 alone
        metrics["transfer"] = transfer_matrix(model, tuned, data.sequences, layers=args.transfer_layers,
                                              max_tokens=args.tokens, chunk_tokens=args.chunk_tokens,
                                              progress=not args.no_progress)
    print(metrics_table(metrics))
    if "transfer" in metrics:
        print(transfer_table(metrics["transfer"]))
    if "precision" in metrics:
        check = metrics["precision"]
        print(f"{check['matmul_dtype']} lens products: KL within {check['max_kl_error']:.2g} nats of float32 "
              f"(largest per-layer difference, measured on the first {check['checked_tokens']} positions)")
    if args.out:
        write_json_atomic(args.out, metrics)
        print(f"metrics written to {args.out}")
    if args.report:
        print(f"report written to {write_metrics_page(metrics, args.report)}")
    return 0
