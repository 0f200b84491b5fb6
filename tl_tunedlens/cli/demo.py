"""``tl-tunedlens demo``: the main job on the embedded default (SmolLM2-135M + Shakespeare and fortunes, offline).

Train a tuned lens for every layer with the default training settings (the ``laptop`` preset of
:class:`~tl_tunedlens.training.config.TrainConfig`: the least-squares start alone; ``--steps N`` adds KL
steps on other sequences), on sequences drawn across all the training documents of the embedded default
text (``DataConfig().data``); evaluate it against the logit lens on sequences drawn across its held-out
documents; print the per-layer table, the fit time and
the held-out mean KL, and write the lens, ``metrics.json``, ``report.md``, the offline trajectory
page ``report.html`` and the per-layer metric curves (``metric_curves.html``/``.png``) under ``--out``.
Exits 1 if the tuned lens does not beat the logit lens in KL at every layer.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..data.config import SEQ_LEN
from ..models import DEFAULT_MODEL
from .common import DEFAULT_TEXT, add_backend_args, add_overwrite_arg, add_progress_arg, load_model_from_args
from .options import add_train_config_args, option_type, train_config_from_args
from .eval import eval_tokens_needed


def register(subparsers) -> None:
    """Add the ``demo`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "demo", help="train and evaluate a tuned lens for the embedded SmolLM2-135M on Shakespeare (offline, ~3 min on 2 cores)",
        description="The main job on the embedded default: SmolLM2-135M and the Shakespeare texts, all layers, "
                    "trained with the default settings (the laptop preset) on the embedded default text, evaluated "
                    "against the logit lens on its held-out documents; lens + metrics.json + reports written to --out.",
    )
    parser.add_argument("--out", default="demo-out", help="output folder (default: %(default)s)")
    add_overwrite_arg(parser)
    parser.add_argument("--seq-len", type=option_type(int, min=2, unit="tokens"), default=SEQ_LEN, help="tokens per sequence (default: %(default)s)")
    parser.add_argument("--eval-tokens", type=option_type(int, min=1, unit="tokens"), default=1024, help="held-out positions scored (default: %(default)s)")
    add_backend_args(parser)
    add_train_config_args(parser)
    add_progress_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tl-tunedlens demo``; returns the exit status."""
    import torch

    from ..artifacts.outdir import OutputFolder

    t_start = time.perf_counter()
    torch.set_num_threads(min(torch.get_num_threads(), 2) if torch.get_num_threads() > 0 else 2)
    config = train_config_from_args(args)
    config.check(args.seq_len)
    with OutputFolder(args.out, overwrite=args.overwrite) as folder:  # locked until everything is written
        return _demo(args, config, folder, t_start)


def _demo(args: argparse.Namespace, config, folder, t_start: float) -> int:
    from ..analysis import evaluate_lenses
    from ..analysis.metrics import layers_where_worse, mean_kl
    from ..data import DataConfig
    from ..lens import TunedLens
    from ..training import train_lens

    model = load_model_from_args(args, DEFAULT_MODEL)
    data = DataConfig(seq_len=args.seq_len)   # the embedded corpus, its default document split
    train = data.load(model.tokenizer, max_tokens=config.token_budget(args.seq_len), n_ctx=model.cfg.n_ctx)
    held = data.load(model.tokenizer, max_tokens=eval_tokens_needed(args.eval_tokens, args.seq_len),
                     n_ctx=model.cfg.n_ctx, split="heldout")
    n_eval = min(len(held), -(-args.eval_tokens // (args.seq_len - 1)))
    print(f"model: {model.cfg.model_name}, {model.cfg.n_layers} layers; training: {len(train)} sequences x "
          f"{args.seq_len} tokens of {data.data} drawn across {len(train.documents)} documents; held-out: {n_eval} "
          f"sequences drawn across {_documents(held.documents)}")

    lens = TunedLens.from_model(model)
    t0 = time.perf_counter()
    result = train_lens(model, lens, train.sequences, config, progress=not args.no_progress, data_info=train.info())
    train_s = time.perf_counter() - t0
    out = folder.work   # a staging folder when --overwrite replaces an earlier demo: swapped in at the end
    lens.save(out, training=result.info)
    t0 = time.perf_counter()
    metrics = evaluate_lenses(model, held.sequences, tuned=lens, bytes_per_token=held.bytes_per_token,
                              max_tokens=args.eval_tokens, progress=not args.no_progress)
    eval_s = time.perf_counter() - t0
    steps = (f"{result.steps} KL steps x {result.info['tokens_per_step']} tokens ({config.optimizer}, "
             f"{result.info['matmul_dtype']} vocabulary matmuls)" if result.steps else "no KL steps")
    timing = (f"least-squares start on {result.info.get('lstsq_tokens')} tokens ({result.info.get('lstsq_seconds')} s), "
              f"{steps}; fit {train_s:.0f} s, evaluation on "
              f"{metrics['tokens']} held-out tokens {eval_s:.0f} s, total {time.perf_counter() - t_start:.0f} s "
              f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    written = _write_outputs(out, model, lens, metrics, held.documents, timing)
    folder.commit()
    print(f"{written} written to {folder.path}")
    print(f"fit: {train_s:.0f} s; held-out mean KL over layers 1..{model.cfg.n_layers - 1}: "
          f"{mean_kl(metrics, 'tuned', 1):.3f} nats (logit lens {mean_kl(metrics, 'logit', 1):.3f})")
    worse = layers_where_worse(metrics)
    if worse:
        print(f"the tuned lens does not beat the logit lens in KL at layers {worse}")
        return 1
    return 0


def _documents(names: list[str]) -> str:
    """``hamlet, othello (shakespeare); 3 documents (fortunes)``: a mixture's documents by part, plays by name."""
    parts: dict[str, list[str]] = {}
    for name in names:
        part, _, doc = name.rpartition("/")
        parts.setdefault(part, []).append(doc.removesuffix("_gut.txt"))
    return "; ".join((", ".join(docs) if len(docs) <= 6 else f"{len(docs)} documents") + (f" ({part})" if part else "")
                     for part, docs in parts.items())


def _write_outputs(out: Path, model, lens, metrics, held_documents: list[str], timing: str) -> str:
    """Print the table and summary; write metrics.json, report.md, report.html and the metric curves;
    returns what was written."""
    from ..analysis.metrics import layers_where_worse, mean_kl
    from ..analysis.tables import metrics_table
    from ..artifacts.files import write_json_atomic, write_text_atomic
    from ..errors import LensError
    from ..viz.plots import write_metric_curves, write_png
    from ..viz.report import write_report

    write_json_atomic(out / "metrics.json", metrics)
    table = metrics_table(metrics)
    n = len(metrics["layers"]) - 1
    wins = n - len(layers_where_worse(metrics))
    summary = (f"mean KL over layers 0..{n - 1}: logit lens {mean_kl(metrics, 'logit'):.3f}, tuned lens "
               f"{mean_kl(metrics, 'tuned'):.3f} nats (layers 1..{n - 1}: {mean_kl(metrics, 'logit', 1):.3f} vs "
               f"{mean_kl(metrics, 'tuned', 1):.3f}); tuned < logit at {wins}/{n} layers")
    print(table, summary, timing, sep="\n")
    write_text_atomic(out / "report.md", "\n".join([
        "# tl-tunedlens demo: SmolLM2-135M on the embedded default text", "",
        f"Held-out documents: {_documents(held_documents)}.", "", summary + ".", "", timing + ".", "",
        "Per layer (nats per token; top1 = agreement with the model's top-1):", "", "```", table, "```", "",
    ]))
    write_report(out / "report.html", model, lens, DEFAULT_TEXT)
    curves = write_metric_curves(metrics, out / "metric_curves.html")
    written = "lens, metrics.json, report.md, report.html (offline trajectory page), metric_curves.html"
    try:
        write_png(curves, out / "metric_curves.png")
        written += ", metric_curves.png"
    except LensError as err:  # PNG export needs kaleido + a Chromium; the HTML is always written
        print(f"note: metric_curves.png skipped: {err}")
    return written
