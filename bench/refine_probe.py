"""One refinement step, probed: held-out KL along each optimiser's first step from a least-squares start.

From a least-squares start on ``--start-tokens`` training tokens (SmolLM2-135M, all 30 layers, spread
sample of ``--data``), one KL gradient over the next 512 tokens, clipped to norm 1 as in training; then
each optimiser's *first* update from that gradient (``adam``: AMSGrad's first step, ``g / |g|`` per
weight, whatever the gradient's scale; ``muon``: torch's Muon, the orthogonalised gradient, biases by
AdamW; ``sgd``: the paper's SGD-Nesterov; ``whitened``: times the inverse damped input second moment of
the start's sample, :mod:`tl_tunedlens.training.precondition`), taken with the real torch optimisers
at lr 1 and scaled by each ``--lr-factors`` x its default learning rate (a first step is linear in lr). Each moved lens is scored on
held-out text (``bench/eval_sets.py``: mean KL over layers 1..29, exact), with the size of the update
and the per-layer ratios to the start. Not a test: ``.venv/bin/python bench/refine_probe.py
--optimizers adam muon --lr-factors 1 0.1 0.01`` (minutes on 2 quiet cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

LAYERS_SHOWN = [1, 5, 10, 15, 20, 25, 29]


def main() -> int:
    from eval_sets import EvalSets

    from tl_tunedlens import TunedLens, load_model
    from tl_tunedlens.core.backend import capture_residuals, flatten_tokens
    from tl_tunedlens.data import load_tokens
    from tl_tunedlens.training import TrainConfig
    from tl_tunedlens.training.loss import accumulate_lens_grads
    from tl_tunedlens.training.lstsq import collect_stats, fit_from_stats_
    from tl_tunedlens.training.config import DEFAULT_LR
    from tl_tunedlens.training.optim import layer_groups, make_optimizer
    from tl_tunedlens.training.precondition import Whitener

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="shakespeare")
    parser.add_argument("--start-tokens", type=int, default=8192)
    parser.add_argument("--eval-seqs", type=int, default=2, help="held-out sequences of 256 tokens per set")
    parser.add_argument("--sets", nargs="+", default=["shakespeare", "pydoc"])
    parser.add_argument("--optimizers", nargs="+", default=["adam", "muon", "whitened"])
    parser.add_argument("--lr-factors", type=float, nargs="+", default=[1.0, 0.1, 0.01],
                        help="learning rates tried, as multiples of each optimiser's default (DEFAULT_LR)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print("load average", os.getloadavg(), flush=True)
    model = load_model("smollm2-135m")
    n_fit = args.start_tokens // 256
    train = load_tokens(args.data, model.tokenizer, 256, split="train", max_tokens=(n_fit + 2) * 256)
    sets = EvalSets(model, args.eval_seqs, names=args.sets)
    lens = TunedLens.from_model(model)
    stats = collect_stats(model, lens, train.sequences[:n_fit], micro_batch=2)
    fit_from_stats_(lens, stats)
    layers = list(range(lens.n_layers))
    start = {name: torch.tensor(sets.per_layer(lens, name)) for name in sets.sets}
    print(f"start: {stats.n} tokens of {args.data}; {sets.describe()}; mean KL 1..29 "
          + ", ".join(f"{k} {v[1:].mean():.4f}" for k, v in start.items()), flush=True)
    params = [p for i in layers for p in lens.translators[i].parameters()]
    for p in params:
        p.requires_grad_(True)
        p.grad = torch.zeros_like(p)
    batch = flatten_tokens(capture_residuals(model, train.sequences[n_fit:n_fit + 2], lens.hook_names))
    accumulate_lens_grads(lens, batch, layers, scale=1 / batch.shape[1])
    norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
    print(f"gradient norm {norm:.4g} (clipped to 1)", flush=True)
    grads = [p.grad.clone() for p in params]
    origin = [p.detach().clone() for p in params]
    for name in args.optimizers:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        if name == "whitened":
            Whitener.from_stats(stats, lens.bias).apply_(lens)
        cfg = TrainConfig(optimizer=name, lr=1.0, weight_decay=0.0, steps=1)
        make_optimizer(layer_groups(lens, layers), dataclasses.replace(cfg)).step()
        with torch.no_grad():
            delta = [p.detach() - p0 for p, p0 in zip(params, origin)]
        size = torch.stack([d.norm() for d in delta[0::2]])   # weights: Frobenius norm per layer at lr 1
        print(f"{name}: update at lr 1, weight Frobenius norm per layer: median {size.median():.3g}", flush=True)
        for lr in [f * DEFAULT_LR[name] for f in args.lr_factors]:
            with torch.no_grad():
                for p, p0, d in zip(params, origin, delta):
                    p.copy_(p0 + lr * d)
            line = []
            for set_name in sets.sets:
                moved = torch.tensor(sets.per_layer(lens, set_name))
                ratios = " ".join(f"{r:.3f}" for r in (moved / start[set_name])[LAYERS_SHOWN].tolist())
                line.append(f"{set_name} {moved[1:].mean():.4f} (x{moved[1:].mean() / start[set_name][1:].mean():.3f}; "
                            f"layers {LAYERS_SHOWN}: {ratios})")
            print(f"  {name} lr {lr:g}: " + "; ".join(line), flush=True)
        with torch.no_grad():
            for p, p0 in zip(params, origin):
                p.copy_(p0)
    print("load average", os.getloadavg(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
