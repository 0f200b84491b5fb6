"""``tl-tunedlens demo``: the main job on the embedded default (SmolLM2-135M + Shakespeare, offline).

Train a tuned lens for every layer (least-squares start, then a short KL refinement) on the
training plays, evaluate it against the logit lens on held-out plays, print the per-layer table,
and write the lens, ``metrics.json``, ``report.md``, the offline trajectory page ``report.html`` and
the per-layer metric curves (``metric_curves.html``/``.png``) under ``--out``. Exits 1 if the tuned lens
does not beat the logit lens in KL at every layer.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="train and evaluate a tuned lens for the embedded SmolLM2-135M on Shakespeare (offline, ~4 min on 2 cores)",
        description="The main job on the embedded default: SmolLM2-135M and the Shakespeare texts, all layers. "
                    "A least-squares start plus a short KL refinement on the training plays, evaluation against "
                    "the logit lens on held-out plays, lens + metrics.json + report.md written to --out.",
    )
    parser.add_argument("--out", default="demo-out", help="output folder (default: %(default)s)")
    parser.add_argument("--seq-len", type=int, default=256, help="(default: %(default)s)")
    parser.add_argument("--lstsq-tokens", type=int, default=32768, help="tokens for the least-squares start (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=8, help="KL refinement steps (default: %(default)s)")
    parser.add_argument("--tokens-per-step", type=int, default=512, help="(default: %(default)s)")
    parser.add_argument("--optimizer", default="adam", choices=["sgd", "adam"], help="(default: %(default)s)")
    parser.add_argument("--lr", type=float, default=None, help="(default: the optimiser's)")
    parser.add_argument("--matmul-dtype", default="float32", choices=["float32", "bfloat16"],
                        help="precision of the vocabulary matmuls in the KL steps; evaluation is always fp32 "
                             "(default: %(default)s)")
    parser.add_argument("--eval-tokens", type=int, default=1024, help="held-out positions scored (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from .._files import write_json_atomic, write_text_atomic
    from ..data import load_documents, split_documents, tokenize
    from ..evaluate import evaluate_lenses, mean_kl
    from ..lens import TunedLens
    from ..models import load_model
    from ..tables import metrics_table
    from ..train import TrainConfig, train_lens

    t_start = time.perf_counter()
    torch.set_num_threads(min(torch.get_num_threads(), 2) if torch.get_num_threads() > 0 else 2)
    out = Path(args.out)
    model = load_model("smollm2-135m")
    docs = load_documents("shakespeare")
    train_docs = split_documents(docs, "train", held_out=0.1, seed=0)
    held_docs = split_documents(docs, "heldout", held_out=0.1, seed=0)
    per_step = max(1, args.tokens_per_step // args.seq_len) * args.seq_len
    train = tokenize(train_docs, model.tokenizer, args.seq_len, n_ctx=model.cfg.n_ctx,
                     max_tokens=args.lstsq_tokens + args.steps * per_step, source="shakespeare [train]")
    need = -(-args.eval_tokens // (args.seq_len - 1)) * args.seq_len
    held = tokenize(held_docs, model.tokenizer, args.seq_len, n_ctx=model.cfg.n_ctx, max_tokens=need,
                    source="shakespeare [heldout]")
    print(f"model: {model.cfg.model_name}, {model.cfg.n_layers} layers; training plays: {len(train_docs)}, "
          f"held-out plays: {', '.join(d.name.removesuffix('_gut.txt') for d in held_docs)}")

    # lstsq data first (step_sequences of the first lstsq_tokens), then fresh sequences for KL steps
    lens = TunedLens.from_model(model)
    cfg = TrainConfig(steps=args.steps, tokens_per_step=args.tokens_per_step, optimizer=args.optimizer, lr=args.lr,
                      init="lstsq", lstsq_tokens=args.lstsq_tokens, checkpoint_every=0,
                      matmul_dtype=args.matmul_dtype)
    t0 = time.perf_counter()
    result = train_lens(model, lens, train.sequences, cfg, progress=not args.no_progress,
                        data_info={"data": "shakespeare", "split": "train", "held_out": 0.1, "split_seed": 0,
                                   "documents": len(train.documents), "bytes_per_token": train.bytes_per_token})
    train_s = time.perf_counter() - t0
    lens.save(out, training=result.info)

    t0 = time.perf_counter()
    metrics = evaluate_lenses(model, held.sequences, tuned=lens, bytes_per_token=held.bytes_per_token,
                              max_tokens=args.eval_tokens, progress=not args.no_progress)
    eval_s = time.perf_counter() - t0
    write_json_atomic(out / "metrics.json", metrics)
    table = metrics_table(metrics)
    layers = metrics["layers"][:-1]
    worse = [e["layer"] for e in layers if not e["tuned"]["kl"] < e["logit"]["kl"]]
    total_s = time.perf_counter() - t_start
    summary = (
        f"mean KL over layers 0..{len(layers) - 1}: logit lens {mean_kl(metrics, 'logit'):.3f}, tuned lens "
        f"{mean_kl(metrics, 'tuned'):.3f} nats (layers 1..{len(layers) - 1}: {mean_kl(metrics, 'logit', 1):.3f} vs "
        f"{mean_kl(metrics, 'tuned', 1):.3f}); tuned < logit at "
        f"{len(layers) - len(worse)}/{len(layers)} layers"
    )
    timing = (f"least-squares start on {result.info.get('lstsq_tokens')} tokens "
              f"({result.info.get('lstsq_seconds')} s), {result.steps} KL steps x {result.info['tokens_per_step']} "
              f"tokens ({args.optimizer}, {args.matmul_dtype} vocabulary matmuls); training {train_s:.0f} s, evaluation on {metrics['tokens']} held-out "
              f"tokens {eval_s:.0f} s, total {total_s:.0f} s")
    print(table)
    print(summary)
    print(timing)
    write_text_atomic(out / "report.md", "\n".join([
        "# tl-tunedlens demo: SmolLM2-135M on Shakespeare", "",
        f"Held-out plays: {', '.join(d.name for d in held_docs)}.", "", summary + ".", "", timing + ".", "",
        "Per layer (nats per token; top1 = agreement with the model's top-1):", "", "```", table, "```", "",
    ]))
    from ..viz.report import write_report
    from .predict import DEFAULT_TEXT

    write_report(out / "report.html", model, lens, DEFAULT_TEXT)
    from ..errors import LensError
    from ..viz.plots import write_metric_curves, write_png

    curves = write_metric_curves(metrics, out / "metric_curves.html")
    written = "lens, metrics.json, report.md, report.html (offline trajectory page), metric_curves.html"
    try:
        write_png(curves, out / "metric_curves.png")
        written += ", metric_curves.png"
    except LensError as err:  # PNG export needs kaleido + a Chromium; the HTML is always written
        print(f"note: metric_curves.png skipped: {err}")
    print(f"{written} written to {out}")
    if worse:
        print(f"the tuned lens does not beat the logit lens in KL at layers {worse}")
        return 1
    return 0
