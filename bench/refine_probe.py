"""One refinement step, probed: held-out KL along the step from a least-squares start, per learning rate.

From a least-squares start on ``--start-tokens`` training tokens (SmolLM2-135M, all 30 layers, spread
Shakespeare sample), one KL gradient over the next 512 tokens; then, for each ``--lrs``, the lens moved
by ``-lr`` x that gradient (``--direction whitened``: times the inverse damped input second moment of the
start's sample, :mod:`tl_tunedlens.training.precondition`; ``raw``: as is) and scored on ``--eval-seqs``
held-out sequences (mean KL over layers 1..29, exact fp32, full vocabulary), with per-layer ratios to
the start. Not a test: ``.venv/bin/python bench/refine_probe.py --start-tokens 8192 --lrs 1 4 16``
(a few minutes on 2 quiet cores). The README's "what each lever gave" comes from it.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

LAYERS_SHOWN = [1, 5, 10, 15, 20, 25, 29]


def main() -> int:
    from tl_tunedlens import TunedLens, load_model
    from tl_tunedlens.analysis import LensEvaluator
    from tl_tunedlens.core.backend import capture_residuals, flatten_tokens
    from tl_tunedlens.data import load_tokens
    from tl_tunedlens.training.loss import accumulate_lens_grads
    from tl_tunedlens.training.lstsq import collect_stats, fit_from_stats_
    from tl_tunedlens.training.precondition import DAMPING, Whitener

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start-tokens", type=int, default=8192)
    parser.add_argument("--eval-seqs", type=int, default=2, help="held-out sequences of 256 tokens scored")
    parser.add_argument("--direction", choices=["whitened", "raw"], default="whitened")
    parser.add_argument("--damping", type=float, default=DAMPING)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1.0, 4.0, 16.0])
    args = parser.parse_args()
    torch.set_num_threads(2)
    print("load average", os.getloadavg(), flush=True)
    model = load_model("smollm2-135m")
    n_fit = args.start_tokens // 256
    train = load_tokens("shakespeare", model.tokenizer, 256, split="train", max_tokens=(n_fit + 2) * 256)
    held = load_tokens("shakespeare", model.tokenizer, 256, split="heldout", max_tokens=args.eval_seqs * 256)
    lens = TunedLens.from_model(model)
    stats = collect_stats(model, lens, train.sequences[:n_fit], micro_batch=2)
    fit_from_stats_(lens, stats)
    resids = flatten_tokens(capture_residuals(model, held.sequences, lens.hook_names)[:, :, :-1])

    def kl() -> torch.Tensor:
        evaluator = LensEvaluator({"lens": lens}, lens.unembed)
        evaluator.add(resids, held.sequences[:, 1:].flatten())
        return torch.tensor([e["lens"]["kl"] for e in evaluator.metrics("", lens.hook_names, float("nan"))["layers"][:-1]])

    start = kl()
    print(f"start: {stats.n} tokens; held-out {resids.shape[1]} positions from {', '.join(held.documents)}; "
          f"mean KL 1..29 {start[1:].mean():.4f}", flush=True)
    lens.requires_grad_(True)
    for p in lens.parameters():
        p.grad = torch.zeros_like(p)
    batch = flatten_tokens(capture_residuals(model, train.sequences[n_fit:n_fit + 2], lens.hook_names))
    accumulate_lens_grads(lens, batch, list(range(lens.n_layers)), scale=1 / batch.shape[1])
    if args.direction == "whitened":
        Whitener.from_stats(stats, lens.bias, args.damping).apply_(lens)
    lens.requires_grad_(False)
    origin = [p.detach().clone() for p in lens.parameters()]
    step = [p.grad.clone() for p in lens.parameters()]
    for lr in args.lrs:
        with torch.no_grad():
            for p, p0, g in zip(lens.parameters(), origin, step):
                p.copy_(p0 - lr * g)
        moved = kl()
        ratios = " ".join(f"{r:.3f}" for r in (moved / start)[LAYERS_SHOWN].tolist())
        print(f"{args.direction} lr {lr:g}: mean KL {moved[1:].mean():.4f}; ratio to the start at layers "
              f"{LAYERS_SHOWN}: {ratios}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
