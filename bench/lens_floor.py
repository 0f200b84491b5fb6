"""How far can an affine lens go? Long KL training on a few layers, to estimate the floor of the mean KL.

Training every layer for long is out of reach on 2 CPU cores, but a layer's translator trains alone (its
loss does not depend on the others), so a handful of layers (``--layers``) can take many times the KL
steps a 10-minute budget gives all 30. The run: the least-squares start on ``--start-tokens`` for every
layer (its per-layer KL on each evaluation set is the profile), then ``--steps`` validated KL steps x
``--tokens-per-step`` on the chosen layers only (``--optimizer``, ``--lr``; the validation slice
``--validation-tokens``, scored every ``--validate-every`` steps, ``--grow`` the learning-rate growth of a
kept block, 1 for none), snapshots at ``--snapshots``.
The table gives, per chosen layer and evaluation set, the KL at each snapshot; the estimate of the
mean over layers 1..29 scales the start's profile by each chosen layer's ratio (end / start), linearly
interpolated between chosen layers (held at the ends).

Not a test: ``.venv/bin/python bench/lens_floor.py`` (about 10 min on 2 quiet cores; each layer and step adds ~1 s).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SEQ_LEN = 256


def interpolate(xs: list[int], ys: list[float], x: int) -> float:
    """Piecewise-linear ``y(x)`` through ``(xs, ys)`` (sorted), held constant beyond the ends."""
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def main() -> int:
    from eval_sets import EvalSets

    from tl_tunedlens import TunedLens, load_model
    from tl_tunedlens.data import DataConfig, load_tokens
    from tl_tunedlens.training import TrainConfig, train_lens
    from tl_tunedlens.training.lstsq import collect_stats

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DataConfig().data)
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 12, 23])
    parser.add_argument("--start-tokens", type=int, default=20480)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--tokens-per-step", type=int, default=512)
    parser.add_argument("--optimizer", default="muon")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--snapshots", type=int, nargs="*", default=[20])
    parser.add_argument("--eval-seqs", type=int, default=3)
    parser.add_argument("--validation-tokens", type=int, default=512, help="0: no validation slice, every step kept")
    parser.add_argument("--validate-every", type=int, default=5, help="steps between scores on the slice")
    parser.add_argument("--grow", type=float, default=None, help="learning-rate growth on a kept step (default: GROW)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    t_start = time.perf_counter()

    model = load_model("smollm2-135m")
    need = args.start_tokens + 512 + args.steps * args.tokens_per_step + 8 * SEQ_LEN
    train = load_tokens(args.data, model.tokenizer, SEQ_LEN, split="train", max_tokens=need)
    sets = EvalSets(model, args.eval_seqs)
    lens = TunedLens.from_model(model)
    cfg = TrainConfig(steps=args.steps, tokens_per_step=args.tokens_per_step, optimizer=args.optimizer, lr=args.lr,
                      lstsq_tokens=args.start_tokens, layers=args.layers, checkpoint_every=0,
                      validation_tokens=args.validation_tokens, validate_every=args.validate_every)
    if args.grow is not None:
        import tl_tunedlens.training.optim as optim
        optim.GROW = args.grow
    from tl_tunedlens.training.order import stream_positions
    fit = train.sequences[stream_positions(len(train.sequences), 0, args.start_tokens // SEQ_LEN, cfg.seed)]
    stats = collect_stats(model, lens, fit, layers=list(range(lens.n_layers)), centre=lens.bias)
    print(f"{len(train)} training sequences of {args.data}; {sets.describe()}; start pass "
          f"{time.perf_counter() - t_start:.0f} s", flush=True)

    snapshots: dict[int, dict[str, list[float]]] = {}

    def on_step(run):
        if run.step == 0 or run.step in args.snapshots:
            snapshots[run.step] = {name: sets.per_layer(lens, name) for name in sets.sets}
            means = "  ".join(f"{n} " + " ".join(f"{v[layer]:.3f}" for layer in args.layers)
                              for n, v in snapshots[run.step].items())
            print(f"  step {run.step:4d}  fit {run.elapsed:6.0f} s  layers {args.layers}: {means}", flush=True)

    result = train_lens(model, lens, train.sequences, cfg, progress=False, on_step=on_step, stats=stats)
    snapshots[result.steps] = {name: sets.per_layer(lens, name) for name in sets.sets}
    val = result.info.get("validation") or {}
    print(f"fit {result.seconds:.0f} s, {result.steps} steps; validation {val.get('start_kl', float('nan')):.3f} -> "
          f"{val.get('best_kl', float('nan')):.3f}, rejected layer-steps {val.get('rejected_steps')}")

    print("\n| set | layer | " + " | ".join(f"step {s}" for s in sorted(snapshots)) + " | end / start |")
    print("| --- | --- | " + " | ".join("---" for _ in snapshots) + " | --- |")
    end = max(snapshots)
    for name in sets.sets:
        for layer in args.layers:
            row = [snapshots[s][name][layer] for s in sorted(snapshots)]
            print(f"| {name} | {layer} | " + " | ".join(f"{v:.3f}" for v in row) + f" | {row[-1] / row[0]:.3f} |")
    print("\nmean KL over layers 1..29: the start measured; the floor estimated from the chosen layers' ratios")
    for name in sets.sets:
        start = snapshots[0][name]
        ratios = [snapshots[end][name][layer] / start[layer] for layer in args.layers]
        layers = range(1, lens.n_layers)
        est = sum(start[i] * interpolate(args.layers, ratios, i) for i in layers) / len(layers)
        measured = sum(start[i] for i in layers) / len(layers)
        print(f"  {name:12} start {measured:.3f}  after {end} steps on the chosen layers (estimated) {est:.3f}  "
              f"per-layer start: " + " ".join(f"{v:.2f}" for v in start[1:]))
    print(f"whole run {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
