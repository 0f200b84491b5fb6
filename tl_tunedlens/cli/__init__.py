"""``tl-tunedlens``: the command line. Each subcommand lives in its own module here and
exposes ``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.

Every error is one line on stderr. Exit status 2: a bad option (argparse's usage message is
replaced by one line pointing at ``--help``) or bad input (:class:`~tl_tunedlens.errors.LensError`,
:class:`~tl_tunedlens.errors.ModelLoadError`), all checked before the work starts where they can be;
exit status 1: the environment failed during the work (``OSError``: a full disk, an I/O or permission
error), with nothing half-written left behind."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import LensError, ModelLoadError, first_line


class UsageError(Exception):
    """A bad command line, as one line: ``prog: error: message (see prog --help)``."""


class _OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise :class:`~tl_tunedlens.cli.UsageError` (one line) instead of printing the usage."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {first_line(Exception(message), 300)} (see {self.prog} --help)")

# subcommand modules, in the order --help lists them
SUBCOMMANDS = ["predict", "tokenize", "train", "eval", "show", "serve", "demo"]


def build_parser() -> argparse.ArgumentParser:
    """The ``tl-tunedlens`` argument parser, one subparser per module in ``SUBCOMMANDS``."""
    parser = _OneLineParser(
        prog="tl-tunedlens",
        description="Tuned lenses for TransformerLens models: train, evaluate, inspect.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; one-line errors on stderr with exit status 2 (bad input) or 1 (the environment), 130 on Ctrl-C."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        print(err, file=sys.stderr)
        return 2
    from ..core.distributed import fail_fast_on_sigterm

    fail_fast_on_sigterm()
    try:
        return int(args.func(args) or 0)
    except (LensError, ModelLoadError) as err:
        print(f"tl-tunedlens {args.command}: error: {first_line(err, 1000)}", file=sys.stderr)
        return 2
    except OSError as err:  # the environment failed during the work: a full disk, an I/O or permission error
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"tl-tunedlens {args.command}: error: {err.strerror or first_line(err)}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tl-tunedlens {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
