"""``tl-tunedlens tokenize``: tokenise a corpus once into a token store on disk (:mod:`tl_tunedlens.data.store`)."""

from __future__ import annotations

import argparse

from .common import DEFAULT_MODEL, DEFAULT_SEQ_LEN, add_data_args, option_type


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
    from ..data import load_documents, split_documents
    from ..data.store import write_store
    from ..errors import LensError
    from ..models import load_tokenizer

    if Path(args.out).expanduser().exists():   # before any tokenizer or text is loaded
        raise LensError(f"{args.out} already exists: pass a new --out folder for the token store (or delete it)")
    check_file_output(args.out)   # its parent can be created and written
    seq_len = args.seq_len or DEFAULT_SEQ_LEN
    tokenizer = load_tokenizer(args.model)
    docs = split_documents(load_documents(args.data, text_field=args.text_field, hf_split=args.hf_split), args.split,
                           held_out=args.held_out, seed=args.split_seed)
    split = {"data": str(args.data), "split": args.split, "held_out": args.held_out, "split_seed": args.split_seed,
             "sample": "all" if args.max_tokens is None else "first"}
    manifest = write_store(docs, tokenizer, seq_len, args.out, max_tokens=args.max_tokens, split=split,
                           source=f"{args.data} [{args.split}]")
    print(f"{manifest['count']} sequences x {seq_len} tokens ({manifest['dtype']}) from {len(manifest['documents'])} "
          f"documents written to {args.out} (tokenizer {manifest['tokenizer']['name']}, hash {manifest['tokenizer']['hash']})")
    return 0
