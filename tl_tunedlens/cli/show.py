"""``tl-tunedlens show``: one offline HTML page of logit-lens and tuned-lens trajectories for a text."""

from __future__ import annotations

import argparse

from .common import DEFAULT_TEXT, add_model_args, add_truncate_arg, check_lens_arg, load_model_from_args
from .options import option_type

#: the longest text ``show`` takes by default, in tokens: the page grows linearly with it (see README, Safety)
DEFAULT_MAX_TOKENS = 128
MAX_TOP_K = 20


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
    parser.add_argument("--top-k", type=option_type(int, min=1, max=MAX_TOP_K), default=5, help="predictions shown on hover (default: %(default)s)")
    parser.add_argument("--max-tokens", type=option_type(int, min=2, unit="tokens"), default=DEFAULT_MAX_TOKENS,
                        help="longest text accepted, in tokens (at most the model's n_ctx); the page and the memory "
                             "grow linearly with it (default: %(default)s)")
    add_truncate_arg(parser)
    parser.add_argument("--contrast", nargs=2, metavar=("A", "B"),
                        help="also show logit(A) - logit(B) per layer, each a single token with its leading space "
                             "(e.g. --contrast ' Paris' ' London'), and every token's prediction depth")
    parser.add_argument("--position", type=int, default=-1,
                        help="the position of the --contrast figure (default: the last)")
    parser.add_argument("--sae", help="folder of an sae-lens SAE on a lens site (sae.save_model(folder)): "
                                      "adds its splice effect and a latent ablation to the page (extra [sae])")
    parser.add_argument("--latent", type=option_type(int, min=0), help="the SAE latent to ablate (default: the most active on the text)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tl-tunedlens show``; returns the exit status."""
    from ..artifacts.outdir import check_file_output
    from ..core.backend import fit_tokens, truncation
    from ..errors import LensError
    from ..lens import TunedLens
    from ..models.sae import load_sae
    from ..viz.report import check_stats, write_report

    stats = [s.strip() for s in args.stats.split(",") if s.strip()]
    if not stats:
        raise LensError("--stats is empty: pass e.g. --stats kl,entropy")
    check_stats(stats)
    check_file_output(args.out)
    check_lens_arg(args.lens)
    if args.latent is not None and not args.sae:
        raise LensError("--latent needs --sae: pass the SAE's folder")
    sae = load_sae(args.sae, device=getattr(args, "device", "cpu")) if args.sae else None
    model = load_model_from_args(args, sae_transformer=sae is not None)
    lens = TunedLens.load(args.lens, model) if args.lens else TunedLens.from_model(model)
    tokens, dropped = fit_tokens(model, args.text, min_tokens=2, max_tokens=args.max_tokens, truncate=args.truncate)
    path = write_report(args.out, model, lens, args.text, stats=stats, top_k=args.top_k, max_tokens=args.max_tokens,
                        truncate=args.truncate, contrast=tuple(args.contrast) if args.contrast else None,
                        position=args.position, sae=sae, latent=args.latent)
    if dropped:
        print(f"note: {truncation(tokens.shape[1], dropped)}")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): open it in a browser (works offline)")
    return 0
