"""``tl-tunedlens predict``: a per-layer table of next-token predictions for one text."""

from __future__ import annotations

import argparse

from .common import DEFAULT_TEXT, add_model_args, add_truncate_arg, check_lens_arg, load_model_from_args
from .options import option_type


def register(subparsers) -> None:
    """Add the ``predict`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "predict", help="print each layer's next-token prediction for a text (logit lens and tuned lens)",
        description="Print, for every lens layer, the logit lens's and the tuned lens's top predictions for "
                    "the next token after TEXT, and their KL to the model's output (nats).",
    )
    add_model_args(parser)
    parser.add_argument("--lens", help="folder of a saved tuned lens (default: an untrained one, equal to the logit lens)")
    parser.add_argument("--text", default=DEFAULT_TEXT, help="the prompt (default: a line of Hamlet)")
    parser.add_argument("--top-k", type=option_type(int, min=1), default=3, help="predictions shown per lens (default: %(default)s)")
    parser.add_argument("--position", type=option_type(int), default=-1,
                        help="position to decode, negative from the end (default: the last)")
    add_truncate_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tl-tunedlens predict``; returns the exit status."""
    from ..analysis.tables import prediction_table
    from ..core.backend import fit_tokens, truncation
    from ..lens import LogitLens, TunedLens

    check_lens_arg(args.lens)
    model = load_model_from_args(args)
    tuned = TunedLens.load(args.lens, model) if args.lens else TunedLens.from_model(model)
    tokens, dropped = fit_tokens(model, args.text, truncate=args.truncate)
    print(f"model: {model.cfg.model_name} ({model.cfg.n_layers} layers, d_model {model.cfg.d_model})")
    print(f"text:  {args.text!r}  ({tokens.shape[1]} tokens; decoding position {args.position})")
    if dropped:
        print(f"note: {truncation(tokens.shape[1], dropped)}")
    label = "tuned" if args.lens else "tuned(untrained)"
    logit = LogitLens.from_model(model, hook_names=tuned.hook_names)
    print(prediction_table(model, {"logit": logit, label: tuned}, tokens, position=args.position, top_k=args.top_k))
    return 0
