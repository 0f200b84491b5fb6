"""``tl-tunedlens tokenize``: tokenise a corpus once into a token store on disk (:mod:`tl_tunedlens.data.store`)."""

from __future__ import annotations

import argparse

from ..models import DEFAULT_MODEL
from .options import add_data_args, data_config_from_args, option_type


def register(subparsers) -> None:
    """Add the ``tokenize`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "tokenize", help="tokenise text once into a token store folder that train / eval --data read",
        description="Tokenise the documents of --data (one --split of them) in order, joined with EOS, into "
                    "fixed-length sequences written to --out/tokens.npy (memory-mapped by train and eval, which "
                    "read only the sequences they use) with a manifest naming the tokenizer, seq_len, split and "
                    "count. Only the tokenizer of --model is loaded, not its weights.",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="whose tokenizer: 'smollm2-135m', an official TransformerLens name, a Hugging Face "
                             "model folder or hub name (default: %(default)s)")
    parser.add_argument("--out", required=True, help="the new store folder")
    add_data_args(parser, default_split="train")
    parser.add_argument("--max-tokens", type=option_type(int, min=1, unit="tokens"), default=None, help="stop after this many tokens (default: all)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tl-tunedlens tokenize``; returns the exit status."""
    from pathlib import Path

    from ..artifacts.outdir import check_file_output
    from ..data.documents import split_source
    from ..data.store import write_store
    from ..errors import LensError
    from ..models import load_tokenizer

    if Path(args.out).expanduser().exists():   # before any tokenizer or text is loaded
        raise LensError(f"{args.out} already exists: pass a new --out folder for the token store (or delete it)")
    check_file_output(args.out)   # its parent can be created and written
    data = data_config_from_args(args)
    if data.is_store:
        raise LensError(f"--data {data.data} is a token store already: pass the text it was made from")
    data.check()
    tokenizer = load_tokenizer(args.model)
    docs = split_source(data.data, data.split, held_out=data.held_out, seed=data.split_seed,
                        text_field=data.text_field, hf_split=data.hf_split)
    split = {**data.split_info(), "sample": "all" if args.max_tokens is None else "first"}
    manifest = write_store(docs, tokenizer, data.seq_len, args.out, max_tokens=args.max_tokens, split=split,
                           source=f"{data.data} [{data.split}]")
    print(f"{manifest['count']} sequences x {data.seq_len} tokens ({manifest['dtype']}) from {len(manifest['documents'])} "
          f"documents written to {args.out} (tokenizer {manifest['tokenizer']['name']}, hash {manifest['tokenizer']['hash']})")
    return 0
