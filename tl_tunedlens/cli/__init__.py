"""``tl-tunedlens``: the command line. Each subcommand lives in its own module here and
exposes ``register(subparsers)``, which adds its parser and sets ``func(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import LensError, ModelLoadError

# subcommand modules, in the order --help lists them
SUBCOMMANDS = ["predict", "train", "eval", "show", "serve", "demo"]


def build_parser() -> argparse.ArgumentParser:
    """The ``tl-tunedlens`` argument parser, one subparser per module in ``SUBCOMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="tl-tunedlens",
        description="Tuned lenses for TransformerLens models: train, evaluate, inspect.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; one-line errors on stderr with exit status 2, 130 on Ctrl-C."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (LensError, ModelLoadError) as err:
        print(f"tl-tunedlens {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tl-tunedlens {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
