"""``tl-tunedlens train``: train a tuned lens on text and save it to a folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_model_args, load_model_from_args


def add_data_args(parser: argparse.ArgumentParser, default_split: str) -> None:
    """Options choosing the text and its train / held-out split (shared by train and eval)."""
    group = parser.add_argument_group("data")
    group.add_argument("--data", default="shakespeare",
                       help="'shakespeare' (embedded), a .txt file, a folder of .txt files, a .jsonl file, "
                            "or a Hugging Face dataset name[:config] (needs the hub) (default: %(default)s)")
    group.add_argument("--text-field", default="text", help="field holding the text in .jsonl / datasets (default: %(default)s)")
    group.add_argument("--hf-split", default="train", help="split of a Hugging Face dataset (default: %(default)s)")
    group.add_argument("--split", default=default_split, choices=["train", "heldout", "all"],
                       help="part of the documents to use; train and heldout never share a document (default: %(default)s)")
    group.add_argument("--held-out", type=float, default=0.1,
                       help="fraction of documents held out from training (default: %(default)s)")
    group.add_argument("--split-seed", type=int, default=0, help="seed of the document split (default: %(default)s)")
    group.add_argument("--seq-len", type=int, default=256, help="tokens per sequence, <= the model's n_ctx (default: %(default)s)")


def load_data_from_args(args: argparse.Namespace, model, max_tokens: int | None):
    from ..data import load_documents, split_documents, tokenize

    docs = load_documents(args.data, text_field=args.text_field, hf_split=args.hf_split)
    docs = split_documents(docs, args.split, held_out=args.held_out, seed=args.split_seed)
    return tokenize(docs, model.tokenizer, args.seq_len, max_tokens=max_tokens, n_ctx=model.cfg.n_ctx,
                    source=f"{args.data} [{args.split}]")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a tuned lens on text and save it",
        description="Train one affine translator per layer so that the lens's next-token distribution matches "
                    "the model's own final one (forward KL, summed over layers). Writes config.json and "
                    "lens.safetensors into --out, plus checkpoint.pt every --checkpoint-every steps.",
    )
    add_model_args(parser)
    parser.add_argument("--out", required=True, help="output folder for the lens and its checkpoint")
    add_data_args(parser, default_split="train")
    opt = parser.add_argument_group("training")
    opt.add_argument("--steps", type=int, default=100, help="optimiser steps (default: %(default)s; the paper uses 250)")
    opt.add_argument("--tokens-per-step", type=int, default=2048,
                     help="tokens per optimiser step, rounded down to whole sequences (default: %(default)s; paper 2^18)")
    opt.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"], help="(default: %(default)s)")
    opt.add_argument("--lr", type=float, default=None,
                     help="learning rate; SGD: paper convention, torch lr = lr * (1 - momentum) (default: 1.0 SGD, 1e-3 Adam)")
    opt.add_argument("--momentum", type=float, default=0.9, help="Nesterov momentum of SGD (default: %(default)s)")
    opt.add_argument("--weight-decay", type=float, default=1e-3, help="(default: %(default)s)")
    opt.add_argument("--clip", type=float, default=1.0, help="max gradient norm, 0 to disable (default: %(default)s)")
    opt.add_argument("--warmup", type=int, default=0, help="linear warmup steps (default: %(default)s)")
    opt.add_argument("--loss", default="kl", choices=["kl", "ce"],
                     help="kl: KL from the model's output to the lens; ce: cross-entropy vs the next token (default: %(default)s)")
    opt.add_argument("--init", default="lstsq", choices=["identity", "lstsq"],
                     help="identity (= logit lens) or the closed-form ridge-regression start (default: %(default)s)")
    opt.add_argument("--lstsq-tokens", type=int, default=8192, help="tokens for the least-squares start (default: %(default)s)")
    opt.add_argument("--ridge", type=float, default=1e-4, help="relative ridge strength of the start (default: %(default)s)")
    opt.add_argument("--layers", type=int, nargs="+", default=None, help="train only these translators (default: all)")
    opt.add_argument("--micro-batch", type=int, default=None, help="sequences per forward pass (default: ~--chunk-tokens tokens)")
    opt.add_argument("--chunk-tokens", type=int, default=512, help="tokens per logits block; bounds memory (default: %(default)s)")
    opt.add_argument("--matmul-dtype", default="float32", choices=["float32", "bfloat16"],
                     help="precision of the lens's vocabulary matmuls; bfloat16 is ~4x faster on CPUs with "
                          "bf16 instructions, the softmax, loss and translators stay fp32 (default: %(default)s)")
    opt.add_argument("--checkpoint-every", type=int, default=10, help="steps between checkpoints, 0 for none (default: %(default)s)")
    opt.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt with the same options")
    opt.add_argument("--seed", type=int, default=0, help="seed of the data order (default: %(default)s)")
    opt.add_argument("--max-tokens", type=int, default=None,
                     help="tokens to read from the data (default: just enough for steps x tokens-per-step)")
    opt.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def train_config_from_args(args: argparse.Namespace):
    from ..train import TrainConfig

    return TrainConfig(
        steps=args.steps, tokens_per_step=args.tokens_per_step, optimizer=args.optimizer, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, clip=args.clip or None,
        warmup_steps=args.warmup, loss=args.loss, seed=args.seed, micro_batch=args.micro_batch,
        chunk_tokens=args.chunk_tokens, checkpoint_every=args.checkpoint_every, init=args.init,
        lstsq_tokens=args.lstsq_tokens, ridge=args.ridge, layers=args.layers,
        matmul_dtype=args.matmul_dtype,
    )


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import CHECKPOINT_NAME
    from ..errors import LensError
    from ..lens import TunedLens
    from ..train import train_lens

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LensError(f"--out {out} is a file: pass a folder path")
    if not args.resume and (out / CHECKPOINT_NAME).exists():
        raise LensError(f"{out} already holds a training checkpoint: pass --resume to continue it or another --out")
    config = train_config_from_args(args)
    if args.seq_len < 2:
        raise LensError(f"--seq-len {args.seq_len} is too short: use at least 2")
    config.check(args.seq_len)
    model = load_model_from_args(args)
    need = max(config.steps * max(1, config.tokens_per_step // args.seq_len) * args.seq_len,
               config.lstsq_tokens if config.init == "lstsq" else 0)
    data = load_data_from_args(args, model, args.max_tokens or need)
    print(f"model: {model.cfg.model_name} ({model.cfg.n_layers} layers); data: {data.source}, "
          f"{len(data)} x {data.seq_len} tokens from {len(data.documents)} documents")
    lens = TunedLens.from_model(model)
    result = train_lens(model, lens, data.sequences, config, out_dir=out, resume=args.resume,
                        progress=not args.no_progress,
                        data_info={"data": str(args.data), "split": args.split, "held_out": args.held_out,
                                   "split_seed": args.split_seed, "documents": len(data.documents),
                                   "bytes_per_token": data.bytes_per_token})
    lens.save(out, training=result.info)
    print(f"trained {result.steps} steps, {result.tokens_seen} tokens, final loss {result.losses[-1]:.4f} nats "
          f"(sum over layers), {result.seconds:.1f} s; lens saved to {out}")
    return 0
