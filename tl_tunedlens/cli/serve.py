"""``tl-tunedlens serve``: the interactive lens explorer, a local web page (needs the ``[app]`` extra)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_model_args, check_lens_arg, load_model_from_args
from .options import option_type


def register(subparsers) -> None:
    """Add the ``serve`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "serve", help="explore lenses in the browser: type text, see every layer's prediction (local web app)",
        description="Load the model and the lenses once and serve a local web page: type a text and see the "
                    "logit lens and each tuned lens side by side as layers x positions heatmaps (KL, entropy, "
                    "cross-entropy, rank, probability of a chosen token; top-k on hover), the per-layer logit "
                    "difference of two tokens, a table comparing the layers at one position, and a button that "
                    "saves the offline page `show` writes. Works offline; binds to 127.0.0.1 unless --host says "
                    "otherwise. Needs the [app] extra: pip install 'tl-tunedlens[app]'.",
    )
    add_model_args(parser)
    parser.add_argument("--lens", nargs="+", default=[], metavar="DIR",
                        help="folders of saved tuned lenses, shown side by side after the logit lens (default: none)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind; anything but loopback exposes the model to the network "
                             "(default: %(default)s)")
    parser.add_argument("--port", type=option_type(int, min=0, max=65535), default=8765, help="port; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--max-tokens", type=option_type(int, min=1, unit="tokens"), default=128, help="longest text accepted, in tokens (default: %(default)s)")
    parser.add_argument("--max-chars", type=option_type(int, min=1, unit="characters"), default=2000, help="longest text accepted, in characters (default: %(default)s)")
    parser.add_argument("--threads", type=option_type(int, min=1), default=None,
                        help="torch CPU threads (default: torch's own); 1 is faster on a machine busy with other work")
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    parser.set_defaults(func=run)


def lens_names(dirs: list[str]) -> list[str]:
    """A display name per lens folder: its folder name, or its path where folder names repeat."""
    names = [Path(d).name or str(d) for d in dirs]
    return [name if names.count(name) == 1 else str(d) for name, d in zip(names, dirs)]


def run(args: argparse.Namespace) -> int:
    """Load the model and lenses, then serve the explorer until Ctrl+C; exit status."""
    from ..app.explorer import Explorer, Limits
    from ..app.server import Server, is_loopback  # a one-line error without the [app] extra (werkzeug)
    limits = Limits(max_chars=args.max_chars, max_tokens=args.max_tokens)
    names = lens_names(args.lens)
    for path in args.lens:  # cheap checks first: the model takes a while to load
        check_lens_arg(path)
    port = Server.check_address(args.host, args.port)
    import torch

    from ..lens import TunedLens

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = load_model_from_args(args)
    lenses = {name: TunedLens.load(path, model) for name, path in zip(names, args.lens)}
    explorer = Explorer(model, lenses, limits=limits)
    server = Server(explorer, args.host, port, quiet=args.quiet)
    if not is_loopback(args.host):
        print(f"warning: serving on {args.host}, reachable from other machines: anyone who can reach it can run the model")
    print(f"tl-tunedlens explorer: {server.url}  (model {explorer.model_name}, lenses: {', '.join(explorer.lenses)}; "
          "Ctrl+C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.stop()
    return 0
