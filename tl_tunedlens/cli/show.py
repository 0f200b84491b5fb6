"""``tl-tunedlens show``: one offline HTML page of logit-lens and tuned-lens trajectories for a text."""

from __future__ import annotations

import argparse

from .common import DEFAULT_TEXT, add_model_args, load_model_from_args


def register(subparsers) -> None:
    """Add the ``show`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "show", help="write an offline HTML report of logit-lens vs tuned-lens predictions for a text",
        description="Write one offline HTML page (plotly.js and circuitsvis inlined, no network) with layers x "
                    "positions heatmaps of the logit lens and the tuned lens side by side (top-1 token in each "
                    "cell, top-k on hover), per-layer averages, and circuitsvis views of every layer's top-k.",
    )
    add_model_args(parser)
    parser.add_argument("--lens", help="folder of a saved tuned lens (default: an untrained one, equal to the logit lens)")
    parser.add_argument("--text", default=DEFAULT_TEXT, help="the prompt (default: a line of Hamlet)")
    parser.add_argument("--out", default="report.html", help="the HTML file to write (default: %(default)s)")
    parser.add_argument("--stats", default="kl,entropy,ce",
                        help="comma-separated heatmap statistics: kl, entropy, ce, prob, rank, max_prob, kl_step, "
                             "delta_<stat> (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=5, help="predictions shown on hover (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tl-tunedlens show``; returns the exit status."""
    from ..errors import LensError
    from ..lens import TunedLens
    from ..viz.report import write_report

    stats = [s.strip() for s in args.stats.split(",") if s.strip()]
    if not stats:
        raise LensError("--stats is empty: pass e.g. --stats kl,entropy")
    if args.top_k < 1:
        raise LensError(f"--top-k must be at least 1, got {args.top_k}")
    model = load_model_from_args(args)
    lens = TunedLens.load(args.lens, model) if args.lens else TunedLens.from_model(model)
    path = write_report(args.out, model, lens, args.text, stats=stats, top_k=args.top_k)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): open it in a browser (works offline)")
    return 0
