"""Time to a good lens: held-out mean KL, in domain and on never-seen text, against fit wall time, every
recipe side by side in one run.

SmolLM2-135M, all 30 layers, sequences of 256 tokens drawn across the training documents of ``--data``
(default: the embedded default, ``DataConfig().data``; spread sampling; the least-squares sample, the
validation slice and the KL steps read disjoint sequences). Quality = mean KL(model || lens) in nats over
layers 1..29, exact (fp32, full vocabulary), on three sets (``bench/eval_sets.py``): the held-out
documents of each embedded training corpus (Shakespeare's plays, the fortune files) and Python's help
topics, never trained on. Fit time is the wall time of the fit alone (evaluations between snapshots
are not counted). Recipes (``--only``):

- ``logit``: the logit lens;
- ``lstsq``: the least-squares start alone, one pass with a snapshot at each ``--lstsq-sizes``;
- ``budgets``: the default recipe (``TrainConfig()``) with ``--time-budget`` T for each ``--budgets`` T,
  each its own run, planned by its own warm-up as the ``train`` command plans it: the curve of what
  more compute buys;
- ``optimizers``: ``--steps`` KL steps x 512 tokens of each ``--optimizers`` (default learning rates, or
  ``--lr-factors`` multiples of them; validation slice on) from the ``--start-tokens`` least-squares start
  and from the identity, snapshots at ``--snapshots``: the optimisers at equal tokens;
- ``paper``: identity start, SGD-Nesterov (the paper preset) with 512-token steps for ``--paper-s``
  seconds, then the reference ``tuned-lens==0.2.0`` loop (``bench/reference_loop.py``) on the Hugging
  Face model, the same sequences in the same order, for the same wall time.

Prints the table and ``uptime``'s load average (timings on a shared machine are inflated; compare rows
of one run, and at equal tokens), and writes a plotly figure (``--out``, offline HTML; ``--png`` a PNG
for the docs). Not a test: ``.venv/bin/python bench/time_to_quality.py`` (about 40 min on 2 quiet
cores: the budgets alone are 30 + 60 + 120 + 300 + 600 s; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SEQ_LEN = 256


@dataclass
class Point:
    recipe: str
    seconds: float
    kl: dict[str, float]          # eval set -> mean KL over layers 1..29
    tokens: str
    info: dict = field(default_factory=dict)


class Bench:
    """The model, the training sequences, the evaluation sets (residuals cached) shared by every recipe."""

    def __init__(self, args):
        from eval_sets import EvalSets

        from tl_tunedlens import load_model
        from tl_tunedlens.data import load_tokens

        self.args = args
        self.model = load_model("smollm2-135m")
        self.train = load_tokens(args.data, self.model.tokenizer, SEQ_LEN, split="train", max_tokens=args.train_tokens)
        self.sets = EvalSets(self.model, args.eval_seqs)
        self.points: list[Point] = []
        self.starts: dict[int, tuple] = {}   # least-squares sample size -> (its sums, seconds of its pass)
        print(f"training sample: {len(self.train)} sequences x {SEQ_LEN} of {args.data} from "
              f"{len(self.train.documents)} documents; held-out {self.sets.describe()}", flush=True)

    def record(self, recipe: str, seconds: float, lens, tokens: str, info: dict | None = None) -> Point:
        point = Point(recipe, seconds, self.sets.kl(lens), tokens, info or {})
        self.points.append(point)
        kls = "  ".join(f"{k} {v:.3f}" for k, v in point.kl.items())
        print(f"  {recipe:40} {seconds:7.1f} s  {kls}  ({tokens})  [{load_average()}]", flush=True)
        return point


def run_logit(b: Bench) -> None:
    from tl_tunedlens import TunedLens

    b.record("logit lens", 0.0, TunedLens.from_model(b.model), "-")


def run_lstsq(b: Bench) -> None:
    """One pass over the sample; at each size, the time so far plus the solve."""
    from tl_tunedlens import TunedLens
    from tl_tunedlens.core.backend import capture_residuals, flatten_tokens
    from tl_tunedlens.training.lstsq import RidgeStats, set_translators_, solve_ridge
    from tl_tunedlens.training.order import stream_positions

    lens = TunedLens.from_model(b.model)
    sizes = sorted(b.args.lstsq_sizes)
    order = stream_positions(len(b.train.sequences), 0, sizes[-1] // SEQ_LEN, 0)
    stats = RidgeStats(list(range(lens.n_layers)), lens.d_model)
    elapsed, done = 0.0, 0
    for size in sizes:
        t0 = time.perf_counter()
        while done < size // SEQ_LEN:
            batch = b.train.sequences[order[done:done + 2]]
            resids = flatten_tokens(capture_residuals(b.model, batch, lens.hook_names))
            stats.update(resids[:-1], resids[-1])
            done += len(batch)
        b.starts[size] = (copy.deepcopy(stats), elapsed + time.perf_counter() - t0)  # the pass so far
        set_translators_(lens, stats.layers, solve_ridge(stats))
        elapsed += time.perf_counter() - t0
        b.record(f"lstsq {size // 1024}k", elapsed, lens, f"{stats.n} fit")


def run_train(b: Bench, recipe: str, config, snapshot_steps=()) -> object:
    """``train_lens`` with ``config``, a snapshot after the start and at ``snapshot_steps`` (and the end).
    A least-squares start whose sample ``run_lstsq`` has already read starts from its sums; that pass's
    time (measured there) is added to the row."""
    from tl_tunedlens import TunedLens
    from tl_tunedlens.training import train_lens

    lens = TunedLens.from_model(b.model)
    fit_tokens = lambda run: run.info.get("lstsq_tokens", 0)
    reuse = config.init == "lstsq" and config.time_budget is None   # a budget plans its own sample
    stats, pass_s = b.starts.get(config.lstsq_tokens, (None, 0.0)) if reuse else (None, 0.0)

    def on_step(run):
        if run.step in snapshot_steps or (run.step == 0 and fit_tokens(run) and stats is None and snapshot_steps):
            b.record(f"{recipe} @{run.step}", pass_s + run.elapsed, lens,
                     f"{fit_tokens(run)} fit + {run.step * run.step_tokens} KL")

    result = train_lens(b.model, lens, b.train.sequences, config, progress=False, on_step=on_step, stats=stats)
    val = result.info.get("validation") or {}
    b.record(recipe, pass_s + result.seconds, lens, f"{fit_tokens(result)} fit + {result.tokens_seen} KL"
             + (f"; validation {val['start_kl']:.3f} -> {val['best_kl']:.3f}, {sum(val['rejected_steps'])} "
                "layer steps rejected" if val else ""), result.info)
    return result


def run_budgets(b: Bench) -> None:
    """The default recipe under each ``--time-budget``, each planned by its own warm-up (as ``train`` does)."""
    from tl_tunedlens.training import TrainConfig

    for budget in b.args.budgets:
        result = run_train(b, f"default, --time-budget {budget:g}", TrainConfig(time_budget=budget, checkpoint_every=0))
        used = result.info.get("budget_used", {})
        print(f"    budget {budget:g} s: fit {result.seconds:.1f} s + warm-up {result.info['budget']['rates']['warmup_s']:.1f} s; "
              f"budget used {used.get('seconds', 0):.1f} s ({used.get('seconds', 0) / budget:.0%}); planned "
              f"{result.info['budget']['lstsq_tokens']} lstsq tokens + {result.info['budget']['steps']} steps, "
              f"ran {result.info.get('lstsq_tokens')} + {used.get('steps_run')}", flush=True)


def run_optimizers(b: Bench) -> None:
    """Each optimiser at equal tokens, from the least-squares start and from the identity."""
    from tl_tunedlens.training import TrainConfig

    from tl_tunedlens.training.config import DEFAULT_LR

    snaps = tuple(b.args.snapshots)
    common = dict(steps=b.args.steps, tokens_per_step=512, checkpoint_every=0)
    for start in b.args.starts:
        for name in b.args.optimizers:
            if name == "whitened" and start == "identity":   # whitened steps need the start's statistics
                continue
            for factor in b.args.lr_factors:
                label = (f"lstsq {b.args.start_tokens // 1024}k" if start == "lstsq" else "identity") + f" + {name}"
                label += f" lr x{factor:g}" if factor != 1 else ""
                run_train(b, label, TrainConfig(optimizer=name, init=start, lstsq_tokens=b.args.start_tokens,
                                                lr=DEFAULT_LR[name] * factor, **common), snaps)


def run_paper_and_reference(b: Bench) -> None:
    """Ours (paper preset) for ``--paper-s`` seconds, then the reference loop on the same batches for as long."""
    from reference_loop import reference_train

    from tl_tunedlens import TunedLens
    from tl_tunedlens.models.embedded import load_hf_smollm2
    from tl_tunedlens.training import TrainConfig
    from tl_tunedlens.training.order import step_sequences

    cfg = TrainConfig.preset("paper", tokens_per_step=512, time_budget=b.args.paper_s, checkpoint_every=0,
                             matmul_dtype="float32")
    ours = run_train(b, "paper recipe (ours)", cfg)
    per_step = 512 // SEQ_LEN
    n_seq = len(b.train.sequences)
    offset = cfg.validation_sequences(SEQ_LEN) if ours.steps else 0
    batches = [b.train.sequences[step_sequences(n_seq, per_step, s, cfg.seed, offset=offset)]
               for s in range(max(ours.steps, 5) + 50)]
    hf, _ = load_hf_smollm2(torch.float32)
    t0 = time.perf_counter()
    ref = reference_train(hf, batches, num_steps=ours.steps, micro_batch=2, autocast=False,
                          deadline=t0 + ours.seconds)
    seconds = time.perf_counter() - t0
    lens = TunedLens.from_model(b.model)
    with torch.no_grad():
        for i, translator in enumerate(lens.translators):
            translator.load_state_dict(ref.lens.layer_translators[i].state_dict())
    b.record("reference tuned-lens 0.2.0 (same time)", seconds, lens, f"0 fit + {len(ref.losses) * 512} KL")
    n = min(5, len(ours.losses), len(ref.losses))
    print(f"paper preset vs reference loop, per-step loss (nats, sum over layers), first {n} steps:")
    for s in range(n):
        a, r = ours.losses[s], ref.losses[s]
        print(f"  step {s + 1}: ours {a:.4f}  reference {r:.4f}  relative difference {abs(a - r) / r:.2e}")


def table(points: list[Point]) -> str:
    names = list(points[0].kl) if points else []
    rows = [f"| recipe | fit s | " + " | ".join(f"{n} KL" for n in names) + " | tokens |",
            "| --- | --- | " + " | ".join("---" for _ in names) + " | --- |"]
    for p in points:
        rows.append(f"| {p.recipe} | {p.seconds:.1f} | " + " | ".join(f"{p.kl[n]:.3f}" for n in names)
                    + f" | {p.tokens} |")
    return "\n".join(rows)


def figure(points: list[Point], path: str, png: str | None = None) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from tl_tunedlens.viz.plots import write_html, write_png

    names = list(points[0].kl)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[f"held-out {n}" + (" (never trained on)" if n == "pydoc"
                                                                                   else "") for n in names])
    groups: dict[str, list[Point]] = {}
    for p in points:
        if p.recipe == "logit lens":
            continue
        key = "default, --time-budget" if p.recipe.startswith("default, --time-budget") else \
            "lstsq" if p.recipe.startswith("lstsq") and "+" not in p.recipe else p.recipe.split(" @")[0]
        groups.setdefault(key, []).append(p)
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"]
    for k, (key, pts) in enumerate(groups.items()):
        pts = sorted(pts, key=lambda p: p.seconds)
        for col, name in enumerate(names, 1):
            fig.add_trace(go.Scatter(x=[p.seconds for p in pts], y=[p.kl[name] for p in pts], mode="lines+markers",
                                     name=key, legendgroup=key, showlegend=col == 1,
                                     line={"color": palette[k % len(palette)], "width": 3 if key.startswith("default") else 1.5},
                                     text=[f"{p.recipe}: {p.tokens}" for p in pts],
                                     hovertemplate="%{text}<br>%{x:.0f} s, KL %{y:.3f}"), row=1, col=col)
    fig.update_xaxes(title_text="fit wall time (s)", type="log")
    fig.update_yaxes(title_text="mean KL(model || lens), layers 1..29 (nats)", col=1)
    fig.update_layout(title="Time to a good lens: SmolLM2-135M, 2 CPU cores", template="plotly_white",
                      width=1400, height=520)
    write_html(fig, path)
    if png:
        write_png(fig, png)


def load_average() -> str:
    return "load " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    from tl_tunedlens.data import DataConfig
    from tl_tunedlens.training.config import OPTIMIZERS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DataConfig().data, help="training text (default: the embedded default)")
    parser.add_argument("--out", default="time_to_quality.html", help="plotly figure (offline HTML)")
    parser.add_argument("--png", default=None, help="the figure as a PNG too (needs Chromium), e.g. for the docs")
    parser.add_argument("--eval-seqs", type=int, default=4, help="sequences of 256 tokens per evaluation set")
    parser.add_argument("--train-tokens", type=int, default=196608, help="training tokens loaded (spread sample)")
    parser.add_argument("--lstsq-sizes", type=int, nargs="+", default=[10240, 20480, 40960, 81920])
    parser.add_argument("--budgets", type=float, nargs="+", default=[30, 60, 120, 300, 600])
    parser.add_argument("--start-tokens", type=int, default=20480, help="least-squares start of the optimisers' runs")
    parser.add_argument("--steps", type=int, default=8, help="KL steps x 512 tokens of each optimiser's runs")
    parser.add_argument("--snapshots", type=int, nargs="*", default=[1, 2, 4], help="steps with a snapshot")
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    parser.add_argument("--lr-factors", type=float, nargs="+", default=[1.0],
                        help="the optimisers' runs at these multiples of their default learning rate")
    parser.add_argument("--starts", nargs="+", default=["lstsq", "identity"], choices=["lstsq", "identity"],
                        help="the starts of the optimisers' runs")
    parser.add_argument("--paper-s", type=float, default=60.0, help="wall time of the paper recipe and the reference")
    parts = ["logit", "lstsq", "budgets", "optimizers", "paper"]
    parser.add_argument("--only", nargs="+", default=["logit", "lstsq", "budgets"], choices=parts)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes: tiny samples")
    args = parser.parse_args()
    if args.quick:
        args.lstsq_sizes, args.start_tokens, args.steps, args.train_tokens = [1024, 2048], 1024, 1, 8192
        args.paper_s, args.eval_seqs, args.snapshots, args.budgets = 10.0, 1, [], [20.0]
    args.lstsq_sizes = sorted({*args.lstsq_sizes, args.start_tokens})   # the refinements start from its sums
    torch.set_num_threads(2)
    t_start = time.perf_counter()
    print(load_average(), flush=True)
    b = Bench(args)
    for part in args.only:
        {"logit": run_logit, "lstsq": run_lstsq, "budgets": run_budgets, "optimizers": run_optimizers,
         "paper": run_paper_and_reference}[part](b)
        print(f"  [{time.perf_counter() - t_start:.0f} s, {load_average()}]", flush=True)
    print(table(b.points))
    figure(b.points, args.out, args.png)
    print(f"figure written to {args.out}; whole run {time.perf_counter() - t_start:.0f} s; {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
