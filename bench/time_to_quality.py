"""Time to a good lens: held-out mean KL against fit wall time, every recipe side by side in one run.

SmolLM2-135M, all 30 layers, sequences of 256 tokens drawn across the Shakespeare training plays
(spread sampling; the least-squares sample and the KL steps read disjoint sequences); quality = mean
KL(model || lens) in nats over layers 1..29 on sequences drawn across the four held-out plays,
computed exactly (fp32, full vocabulary). Fit time is the wall time of the fit alone (evaluations
between snapshots are not counted). Recipes:

- ``logit lens``: no fit;
- ``lstsq N``: the least-squares start alone, one pass with a snapshot at each sample size N;
- ``before``: the previous demo recipe, a 32,768-token start + 8 Adam steps x 512 tokens (``--only before``);
- ``adam``: the ``--start-tokens`` start + ``--steps`` Adam steps x 512 tokens (by default the laptop
  preset, ``TrainConfig()``; a row that equals it is marked);
- ``whitened lr=X``: the same start + ``--steps`` whitened steps (:mod:`tl_tunedlens.training.precondition`)
  for each ``--whitened-lrs``;
- ``paper``: identity start, SGD-Nesterov (the paper preset) with 512-token steps for ``--paper-s``
  seconds (``time_budget``), then the reference ``tuned-lens==0.2.0`` loop (``bench/reference_loop.py``,
  its lens class, fp32) on the Hugging Face model, the same sequences in the same order, for the same
  wall time; their per-step losses of the first steps are printed side by side (they must agree within 1%).

Snapshots along each run (after the start and at ``--snapshots`` steps) give the curves. Prints the
table and ``uptime``'s load average (timings on a shared machine are inflated; compare rows of one
run), and writes a plotly figure (``--out``, offline HTML). Not a test: ``.venv/bin/python
bench/time_to_quality.py`` (about 10 min on 2 quiet CPU cores; ``--quick`` for a smoke run, ``--only``
for a subset, bigger samples with ``--lstsq-sizes``/``--max-fit-tokens``, longer paper runs with ``--paper-s``).
"""

from __future__ import annotations

import argparse
import copy
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
    kl: float
    tokens: str
    per_layer: list[float] = field(default_factory=list)


class Bench:
    """The model, the data, cached held-out residuals and the evaluator shared by every recipe."""

    def __init__(self, args):
        from tl_tunedlens import LogitLens, load_model
        from tl_tunedlens.core.backend import capture_residuals, flatten_tokens
        from tl_tunedlens.data import load_tokens

        self.args = args
        self.model = load_model("smollm2-135m")
        tok = self.model.tokenizer
        need = (args.max_fit_tokens + 64 * 512) // SEQ_LEN * SEQ_LEN
        self.train = load_tokens("shakespeare", tok, SEQ_LEN, split="train", max_tokens=need)
        self.held = load_tokens("shakespeare", tok, SEQ_LEN, split="heldout", max_tokens=args.eval_seqs * SEQ_LEN)
        logit = LogitLens.from_model(self.model)
        self.hook_names = logit.hook_names
        batches = [flatten_tokens(capture_residuals(self.model, self.held.sequences[i:i + 2], logit.hook_names)[:, :, :-1])
                   for i in range(0, len(self.held.sequences), 2)]
        self.resids = torch.cat(batches, 1)
        self.labels = self.held.sequences[:, 1:].flatten()
        self.points: list[Point] = []
        self.starts: dict[int, tuple] = {}   # least-squares sample size -> (its sums, seconds of its pass)
        print(f"training sample: {len(self.train)} sequences x {SEQ_LEN} from {len(self.train.documents)} plays; "
              f"held-out: {self.resids.shape[1]} positions from {', '.join(self.held.documents)}", flush=True)

    def kl(self, lens) -> list[float]:
        """Per-layer held-out KL (nats) of ``lens``, layers 0..n-1."""
        from tl_tunedlens.analysis import LensEvaluator

        evaluator = LensEvaluator({"lens": lens}, lens.unembed)
        evaluator.add(self.resids, self.labels)
        metrics = evaluator.metrics("", self.hook_names, float("nan"))
        return [e["lens"]["kl"] for e in metrics["layers"][:-1]]

    def record(self, recipe: str, seconds: float, lens, tokens: str) -> Point:
        per_layer = self.kl(lens)
        point = Point(recipe, seconds, sum(per_layer[1:]) / len(per_layer[1:]), tokens, per_layer)
        self.points.append(point)
        print(f"  {recipe:44} {seconds:7.1f} s  mean KL {point.kl:.3f}  ({tokens})", flush=True)
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
    sizes = sorted(s for s in b.args.lstsq_sizes if s <= b.args.max_fit_tokens)
    n_seq = sizes[-1] // SEQ_LEN
    order = stream_positions(len(b.train.sequences), 0, n_seq, 0)
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
    stats, pass_s = b.starts.get(config.lstsq_tokens, (None, 0.0)) if config.init == "lstsq" else (None, 0.0)

    def on_step(run):
        if run.step in snapshot_steps or (run.step == 0 and fit_tokens(run) and stats is None):
            b.record(f"{recipe} @{run.step}", pass_s + run.elapsed, lens,
                     f"{fit_tokens(run)} fit + {run.step * run.step_tokens} KL")

    result = train_lens(b.model, lens, b.train.sequences, config, progress=False, on_step=on_step, stats=stats)
    b.record(recipe, pass_s + result.seconds, lens, f"{fit_tokens(result)} fit + {result.tokens_seen} KL")
    return result


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
    batches = [b.train.sequences[step_sequences(n_seq, per_step, s, cfg.seed)] for s in range(max(ours.steps, 5) + 50)]
    hf, _ = load_hf_smollm2(torch.float32)
    t0 = time.perf_counter()
    ref = reference_train(hf, batches, num_steps=ours.info["budget"]["steps"], micro_batch=2, autocast=False,
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
    logit = next((p.kl for p in points if p.recipe == "logit lens"), None)
    rows = [f"{'recipe':46} {'fit s':>7} {'mean KL 1..29':>14} {'vs logit':>9}  tokens"]
    for p in points:
        vs = f"{p.kl / logit:.3f}" if logit else "-"
        rows.append(f"{p.recipe:46} {p.seconds:7.1f} {p.kl:14.3f} {vs:>9}  {p.tokens}")
    return "\n".join(rows)


def figure(points: list[Point], path: str) -> None:
    import plotly.graph_objects as go

    from tl_tunedlens.viz.plots import write_html

    fig = go.Figure()
    groups: dict[str, list[Point]] = {}
    for p in points:
        groups.setdefault(p.recipe.split(" @")[0].split(" ")[0] if p.recipe.startswith("lstsq ") else p.recipe.split(" @")[0], []).append(p)
    for name, pts in groups.items():
        fig.add_trace(go.Scatter(x=[p.seconds for p in pts], y=[p.kl for p in pts], mode="lines+markers", name=name,
                                 text=[f"{p.recipe}: {p.tokens}" for p in pts], hovertemplate="%{text}<br>%{x:.0f} s, KL %{y:.3f}"))
    fig.update_layout(title="Time to a good lens: SmolLM2-135M, held-out Shakespeare plays",
                      xaxis_title="fit wall time (s)", yaxis_title="mean KL(model || lens), layers 1..29 (nats)",
                      yaxis_type="log", template="plotly_white")
    write_html(fig, path)


def preset_mark(cfg) -> str:
    """`` (laptop preset)`` where ``cfg`` trains like ``TrainConfig()`` (checkpoints aside, the learning rate resolved)."""
    import dataclasses

    from tl_tunedlens.training.config import DEFAULT_LR, TrainConfig

    def key(c):
        return {**dataclasses.asdict(c), "checkpoint_every": 0, "lr": c.lr or DEFAULT_LR[c.optimizer]}

    return " (laptop preset)" if key(cfg) == key(TrainConfig()) else ""


def load_average() -> str:
    import os

    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    from tl_tunedlens.training import TrainConfig
    from tl_tunedlens.training.config import DEFAULT_LR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="time_to_quality.html", help="plotly figure (offline HTML)")
    parser.add_argument("--eval-seqs", type=int, default=4, help="held-out sequences of 256 tokens scored")
    parser.add_argument("--lstsq-sizes", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--max-fit-tokens", type=int, default=32768)
    parser.add_argument("--start-tokens", type=int, default=TrainConfig().lstsq_tokens,
                        help="least-squares start of adam/whitened (default: the laptop preset's)")
    parser.add_argument("--steps", type=int, default=TrainConfig().steps,
                        help="KL steps x 512 tokens of adam/whitened (default: the laptop preset's)")
    parser.add_argument("--snapshots", type=int, nargs="*", default=[1, 2], help="steps with a snapshot")
    parser.add_argument("--whitened-lrs", type=float, nargs="+", default=[DEFAULT_LR["whitened"]])
    parser.add_argument("--paper-s", type=float, default=60.0, help="wall time of the paper recipe and the reference")
    parts = ["logit", "lstsq", "before", "adam", "whitened", "paper"]
    parser.add_argument("--only", nargs="+", default=["logit", "lstsq", "adam", "whitened", "paper"], choices=parts)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes: tiny samples")
    args = parser.parse_args()
    if args.quick:
        args.lstsq_sizes, args.max_fit_tokens, args.start_tokens, args.steps = [1024, 2048], 2048, 1024, 1
        args.paper_s, args.eval_seqs, args.snapshots = 10.0, 1, []
    args.max_fit_tokens = max(args.max_fit_tokens, args.start_tokens, 32768 if "before" in args.only else 0)
    args.lstsq_sizes = sorted({*args.lstsq_sizes, args.start_tokens})   # the refinements start from its sums
    torch.set_num_threads(2)
    t_start = time.perf_counter()
    print(load_average(), flush=True)
    b = Bench(args)
    refine = dict(lstsq_tokens=args.start_tokens, steps=args.steps, tokens_per_step=512, checkpoint_every=0)
    snaps = tuple(args.snapshots)
    for part in args.only:
        if part == "logit":
            run_logit(b)
        elif part == "lstsq":
            run_lstsq(b)
        elif part == "before":
            run_train(b, "before: lstsq 32k + 8 adam x 512", TrainConfig(
                optimizer="adam", steps=8, tokens_per_step=512, lstsq_tokens=32768, checkpoint_every=0), (2, 4))
        elif part == "adam":
            cfg = TrainConfig(optimizer="adam", **refine)
            run_train(b, f"lstsq {args.start_tokens // 1024}k + adam{preset_mark(cfg)}", cfg, snaps)
        elif part == "whitened":
            for lr in args.whitened_lrs:
                cfg = TrainConfig(optimizer="whitened", lr=lr, **refine)
                run_train(b, f"lstsq {args.start_tokens // 1024}k + whitened lr={lr:g}{preset_mark(cfg)}", cfg, snaps)
        elif part == "paper":
            run_paper_and_reference(b)
        print(f"  [{time.perf_counter() - t_start:.0f} s, {load_average()}]", flush=True)
    print(table(b.points))
    figure(b.points, args.out)
    print(f"figure written to {args.out}; whole run {time.perf_counter() - t_start:.0f} s; {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
