"""``tl-tunedlens predict``: a per-layer table of next-token predictions for one text."""

from __future__ import annotations

import argparse

from .common import DEFAULT_TEXT, add_model_args, load_model_from_args


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
    parser.add_argument("--top-k", type=int, default=3, help="predictions shown per lens (default: %(default)s)")
    parser.add_argument("--position", type=int, default=-1, help="position to decode (default: the last)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tl-tunedlens predict``; returns the exit status."""
    from ..analysis.tables import prediction_table
    from ..core.backend import to_tokens
    from ..lens import LogitLens, TunedLens

    model = load_model_from_args(args)
    tuned = TunedLens.load(args.lens, model) if args.lens else TunedLens.from_model(model)
    tokens = to_tokens(model, args.text)
    print(f"model: {model.cfg.model_name} ({model.cfg.n_layers} layers, d_model {model.cfg.d_model})")
    print(f"text:  {args.text!r}  ({tokens.shape[1]} tokens; decoding position {args.position})")
    label = "tuned" if args.lens else "tuned(untrained)"
    print(prediction_table(model, {"logit": LogitLens.from_model(model), label: tuned}, tokens,
                           position=args.position, top_k=args.top_k))
    return 0
