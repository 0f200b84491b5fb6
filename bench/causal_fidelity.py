"""Causal fidelity on SmolLM2-135M (Belrose et al. 2023): do the directions that matter to a lens
matter to the model?

For each lens (the logit lens and a trained tuned lens) and each chosen layer: the lens's own causal
basis (``k`` directions whose mean ablation changes that lens's output most, on the residuals of
held-out text), then, direction by direction, the mean-ablation effect on the lens's output and on
the model's final output (KL, nats), and Spearman's rank correlation between the two. Printed per
layer and pooled over layers. Not a test:

    .venv/bin/python bench/causal_fidelity.py --lens DIR [--layers 10 20] [--k 8] [--tokens 64]

Without ``--lens`` the tuned lens is the least-squares start (:func:`~tl_tunedlens.training.lstsq_init_`)
fitted here on ``--fit-tokens`` training tokens at the chosen layers only.
"""

from __future__ import annotations

import argparse
import time

import torch

from tl_tunedlens import LogitLens, TunedLens, load_model, load_tokens
from tl_tunedlens.analysis import ablation_effects, causal_basis, spearman
from tl_tunedlens.analysis.tables import format_table
from tl_tunedlens.training import lstsq_init_


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lens", help="folder of a trained tuned lens for SmolLM2-135M (default: fit one, --fit-tokens)")
    parser.add_argument("--fit-tokens", type=int, default=4096, help="tokens of the least-squares start without --lens")
    parser.add_argument("--layers", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--k", type=int, default=8, help="directions per layer and lens")
    parser.add_argument("--tokens", type=int, default=64, help="held-out positions the directions are fitted and scored on")
    parser.add_argument("--max-iter", type=int, default=10, help="L-BFGS iterations per direction")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model("smollm2-135m")
    start = time.perf_counter()
    if args.lens:
        tuned = TunedLens.load(args.lens, model)
    else:
        tuned = TunedLens.from_model(model)
        train = load_tokens("shakespeare", model.tokenizer, 256, split="train", max_tokens=args.fit_tokens).sequences
        lstsq_init_(tuned, model, train, layers=args.layers)
        print(f"least-squares start on {train.numel()} tokens at layers {args.layers}: {time.perf_counter() - start:.0f} s")
    lenses = {"logit lens": LogitLens.from_model(model), "tuned lens": tuned}
    tokens = load_tokens("shakespeare", model.tokenizer, args.tokens, split="heldout", max_tokens=args.tokens).sequences[:1]
    rows, pooled = [], {name: ([], []) for name in lenses}
    for layer in args.layers:
        for name, lens in lenses.items():
            basis = causal_basis(lens, model, tokens, layer, k=args.k, max_iter=args.max_iter)
            fx = ablation_effects(lens, model, tokens, layer, basis.directions)
            pooled[name][0].append(fx.lens_effects)
            pooled[name][1].append(fx.model_effects)
            rows.append([layer, name, float(fx.lens_effects[0]), float(fx.lens_effects[-1]),
                         float(fx.model_effects.max()), float(fx.model_effects.min()), fx.spearman])
    for name, (lens_fx, model_fx) in pooled.items():
        rows.append(["all", name, "", "", "", "", spearman(torch.cat(lens_fx), torch.cat(model_fx))])
    print(format_table(["layer", "lens", "lens effect max", "lens effect min", "model effect max", "model effect min",
                        "Spearman"], rows))
    print(f"{args.k} directions per layer and lens, {tokens.numel()} held-out tokens, mean ablation, KL in nats; "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
