"""``tl-tunedlens train``: train a tuned lens on text and save it to a folder.

Under ``torchrun --nproc_per_node N -m tl_tunedlens train ...`` every rank runs this command; rank 0
alone prints, shows progress and writes the checkpoint and the lens (:mod:`tl_tunedlens.core.distributed`).
"""

from __future__ import annotations

import argparse
import dataclasses

from typing import TYPE_CHECKING

from .common import (add_distributed_args, add_model_args, add_overwrite_arg, add_progress_arg, check_layers_arg,
                     load_model_from_args, start_distributed)
from .options import add_data_args, add_train_config_args, data_config_from_args, option_type, train_config_from_args

if TYPE_CHECKING:
    from pathlib import Path

    from ..core.backend import Model
    from ..lens import TunedLens
    from ..training import TrainConfig, TrainResult
    from ..training.budget import BudgetPlan


def register(subparsers) -> None:
    """Add the ``train`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "train", help="train a tuned lens on text and save it",
        description="Train one affine translator per layer so that the lens's next-token distribution matches "
                    "the model's own final one (forward KL, summed over layers). Writes config.json and "
                    "lens.safetensors into --out, plus checkpoint.pt every --checkpoint-every steps.",
    )
    add_model_args(parser)
    parser.add_argument("--out", required=True, help="output folder for the lens and its checkpoint")
    parser.add_argument("--hooks", default=None,
                        help="residual hook points the lens reads instead of the default (embeddings, then every "
                             "resid_post): 'resid_mid' (every blocks.{i}.hook_resid_mid, after attention) or "
                             "comma-separated names, e.g. blocks.3.hook_resid_mid,blocks.7.hook_resid_pre")
    add_data_args(parser, default_split="train")
    add_train_config_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt with the same options")
    add_overwrite_arg(parser)
    parser.add_argument("--max-tokens", type=option_type(int, min=1, unit="tokens"), default=None,
                        help="tokens to read from the data (default: what the settings need, see "
                             "TrainConfig.token_budget; a token store: all of it)")
    add_distributed_args(parser)
    add_progress_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tl-tunedlens train``; returns the exit status."""
    from contextlib import nullcontext

    from ..artifacts.outdir import OutputFolder

    config = train_config_from_args(args)
    data = data_config_from_args(args)
    config.check(data.seq_len)
    data.check()
    check_layers_arg(args.model, parse_hooks(args.hooks), config.layers)
    folder = OutputFolder(args.out, resume=args.resume, overwrite=args.overwrite)
    folder.check()   # on every rank, before any joins the group: a bad --out fails them all alike
    dist = start_distributed(args)
    try:
        with folder if dist.is_main else nullcontext(folder):  # rank 0 owns (locks) it until the lens is saved
            return _train(args, config, data, folder, dist)
    except BaseException:
        dist.abort()   # the other ranks fail at their next collective instead of waiting for the timeout
        raise


def _train(args: argparse.Namespace, config, data_config, folder, dist) -> int:
    from ..lens import TunedLens
    from ..training import train_lens

    out = folder.work   # the folder itself, or its staging folder when the run replaces an earlier lens
    say = print if dist.is_main else (lambda *_: None)
    model = load_model_from_args(args)
    lens = TunedLens.from_model(model, hook_names=parse_hooks(args.hooks))
    plan = budget_plan(model, lens, config, data_config.seq_len, out if args.resume else None)
    planned = plan.apply(config) if plan is not None else config
    if plan is not None and plan.steps:   # room for the steps re-planned from the time left (budget.steps_that_fit)
        planned = dataclasses.replace(planned, steps=plan.steps + plan.steps // 2 + 2)
    wanted = args.max_tokens if data_config.is_store else args.max_tokens or planned.token_budget(data_config.seq_len)
    data = data_config.load(model.tokenizer, max_tokens=wanted, n_ctx=model.cfg.n_ctx)
    say(f"model: {model.cfg.model_name} ({model.cfg.n_layers} layers); data: {data.source}, "
        f"{len(data)} x {data.seq_len} tokens from {len(data.documents)} documents"
        + (f"; {dist.world} ranks ({dist.backend})" if dist.active else ""))
    if folder.staged:
        say(f"--overwrite: the earlier lens in {folder.path} stays until this run's lens is complete")
    result = train_lens(model, lens, data.sequences, config, out_dir=out, resume=args.resume,
                        progress=not args.no_progress, data_info=data.info(), plan=plan, dist=dist)
    replaced = []
    if dist.is_main:
        lens.save(out, training=result.info)
        replaced = folder.commit()
    dist.barrier("saving the lens")
    dist.close()
    say(f"{training_summary(result)}; lens saved to {folder.path}"
        + (f" (replacing the earlier {', '.join(replaced)})" if replaced else ""))
    return 0


def parse_hooks(text: str | None) -> str | list[str] | None:
    """``--hooks``: ``None`` (the default hook points), a named set such as ``resid_mid``, or a comma list."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    return names[0] if len(names) == 1 and "." not in names[0] else names


def budget_plan(model: "Model", lens: "TunedLens", config: "TrainConfig", seq_len: int,
                resume_from: "Path | None" = None) -> "BudgetPlan | None":
    """With ``--time-budget``: the plan (the checkpoint's when resuming, else a measured warm-up, printed)."""
    from ..training.budget import saved_plan
    from ..training.trainer import plan_run

    if config.time_budget is None:
        return None
    if resume_from is not None and (plan := saved_plan(resume_from)) is not None:
        return plan
    plan = plan_run(model, lens, config, seq_len)
    print(f"plan for {config.time_budget:g} s of fitting (from a {plan.rates.warmup_s:.1f} s warm-up; loading and "
          f"saving come on top): least-squares start on {plan.lstsq_tokens} tokens (~{plan.predicted_fit_s:.0f} s), "
          f"then {plan.steps} KL steps x {plan.tokens_per_step} tokens (~{plan.predicted_step_s:.0f} s each)")
    return plan


def training_summary(result: "TrainResult") -> str:
    """One line: what the fit did and how long it took (and, with a budget, whether it stopped early)."""
    info = result.info
    parts = []
    if info.get("lstsq_tokens"):
        parts.append(f"least-squares start on {info['lstsq_tokens']} tokens ({info.get('lstsq_seconds', 0):.0f} s)")
    if result.losses:
        parts.append(f"{len(result.losses)} KL steps x {info['tokens_per_step']} tokens ({info['optimizer']}), "
                     f"final loss {result.losses[-1]:.4f} nats (sum over layers)")
    if info.get("validation"):
        val = info["validation"]
        parts.append(f"validation KL {val['start_kl']:.4f} -> {val['best_kl']:.4f} nats (mean over layers, "
                     f"{val['tokens']} tokens; {sum(val['rejected_steps'])} layer steps rejected)")
    if "budget" in info:
        used = info.get("budget_used", {})
        parts.append(f"time budget {info['budget']['budget_s']:g} s, {used.get('seconds', result.seconds):.0f} s "
                     "of it used" +
                     (f", stopped after {used.get('steps_run')} of {used.get('steps_planned')} planned steps"
                      if info.get("stopped_early") and used.get("steps_planned") else "") +
                     (f", the least-squares sample cut to {used.get('lstsq_tokens')} of "
                      f"{used.get('lstsq_tokens_planned')} tokens"
                      if info.get("stopped_early") and used.get("lstsq_tokens", 0) < used.get("lstsq_tokens_planned", 0)
                      else ""))
    return f"fit in {result.seconds:.1f} s: " + "; ".join(parts)
