"""``tl-tunedlens demo``: the main job on the embedded default (SmolLM2-135M, offline)."""

from __future__ import annotations

import argparse

from .predict import DEFAULT_TEXT


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the main job on the embedded SmolLM2-135M model (offline)",
        description="Load the embedded SmolLM2-135M model and print logit-lens and untrained tuned-lens "
                    "predictions for a sentence.",
    )
    parser.add_argument("--text", default=DEFAULT_TEXT, help="the prompt (default: a line of Hamlet)")
    parser.add_argument("--out", default="demo-out", help="output folder (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .predict import run as run_predict

    ns = argparse.Namespace(model="smollm2-135m", device="cpu", dtype="float32", lens=None,
                            text=args.text, top_k=3, position=-1)
    return run_predict(ns)
