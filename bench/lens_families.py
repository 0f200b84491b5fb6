"""Lens families head to head on SmolLM2-135M as a raw TransformerBridge: quality, causal fidelity, steering, cost.

Families, all scored as lenses of ours (a J-lens is imported with ``TunedLens.from_jacobian_lens``):

- ``logit lens``: no fit;
- ``J-lens N``: TransformerLens's own ``JacobianLens.fit`` on ``N`` prompts of ``--jlens-tokens`` tokens from the
  Shakespeare training plays; one pass over the largest ``N`` of ``--jlens-prompts``, fitted slice by slice and
  combined with ``JacobianLens.merge`` (a prompt-weighted mean, so each snapshot is exactly the fit on its first
  ``N`` prompts), with a snapshot at each ``N``; fit time is cumulative;
- ``ours lstsq``: ``train_lens`` with the laptop preset (``TrainConfig()``: the least-squares start alone on
  ``--lstsq-tokens``, by default the preset's), and ``ours lstsq + K adam``: the same run continued for ``--steps``
  Adam steps of 512 tokens (the first is a snapshot of the second run after its start).

Scores, on held-out plays never used for fitting (the split of ``bench/time_to_quality.py``: ``load_tokens(...,
split="heldout")``; ``--ood-data`` adds the mean KL on any other text ``load_tokens`` reads): per-layer KL(model ||
lens), CE, entropy and top-1 agreement (:class:`~tl_tunedlens.analysis.LensEvaluator`, exact, fp32), means over
layers 1..n-1 in the table and per-layer KL in the figure; causal fidelity, the Spearman correlation between each
direction's mean-ablation effect on the lens and on the model over the lens's own causal basis (as in
``bench/causal_fidelity.py``, pooled over ``--causal-layers``); the steering effect, the mean increase of the
model's log-prob of a token per unit ``alpha`` when steering toward it with the lens's ``steering_hooks`` at the
last position (``alpha = --steer-alpha``, tokens drawn from the held-out text, averaged over ``--steer-layers``);
fit wall time and an estimate of the fit's matmul FLOPs (forward and input-gradient products of the blocks,
attention scores included; J-lens: one forward of ``dim_batch`` copies plus ``ceil(d_model / dim_batch)`` backward
passes per prompt; least squares: the forward plus the ridge sums; Adam steps: ``bench_train.flops``).

Prints one markdown table and writes one plotly figure (``--figure``: HTML, and PNG beside it when kaleido and a
Chromium are there). Not a test; under TransformerLens 4.x (``JacobianLens`` is in 3.9 too):

    .venv-tl4/bin/python bench/lens_families.py --figure lens_families.html

A J-lens prompt of 64 tokens costs ~80 s on 2 quiet CPU cores (``dim_batch`` 32): size it with
``--jlens-prompts``/``--jlens-tokens`` (``--jlens-layers`` fits only some layers, with a shorter backward);
``--quick`` is a smoke run of a few minutes at tiny sizes (J-lens layers 26-28 only).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SEQ_LEN = 256   # held-out and training sequences of our lenses (as bench/time_to_quality.py)


@dataclass
class Family:
    name: str
    lens: object
    fit_s: float = 0.0
    flops: float = 0.0
    data: str = "-"
    scores: dict = field(default_factory=dict)


def block_params(model) -> int:
    return sum(p.numel() for p in model.blocks.parameters())


def forward_flops(model, seq_len: int) -> float:
    """Matmul FLOPs of one token through the blocks (weights, plus attention scores and mixing)."""
    return 2 * block_params(model) + model.cfg.n_layers * 4 * seq_len * model.cfg.d_model


def jlens_flops(model, prompts: int, tokens: int, dim_batch: int, first_source: int) -> float:
    """One forward of ``dim_batch`` copies, then ``ceil(d_model / dim_batch)`` backward passes (input gradients only,
    about a forward each) through the blocks above the first source layer, per prompt."""
    n, passes = model.cfg.n_layers, math.ceil(model.cfg.d_model / dim_batch)
    per_block = forward_flops(model, tokens) / n
    return prompts * tokens * dim_batch * per_block * (n + passes * (n - 1 - first_source))


def lstsq_flops(model, tokens: int) -> float:
    d, n = model.cfg.d_model, model.cfg.n_layers
    return tokens * (forward_flops(model, SEQ_LEN) + n * 4 * d * d) + n * 3 * d**3


def fit_jlens(model, args, families: list[Family]) -> None:
    """TL's fit on the largest prompt count, slice by slice, with a merged snapshot at each count."""
    from transformer_lens.tools.analysis import JacobianLens

    from tl_tunedlens import TunedLens, load_tokens

    if args.jlens_from:   # a J-lens fitted earlier (e.g. --save-jlens): scored, its fit time not measured here
        jl = JacobianLens.load(args.jlens_from)
        families.append(Family(f"J-lens {jl.n_prompts} (file)", TunedLens.from_jacobian_lens(jl, model), math.nan,
                               jlens_flops(model, jl.n_prompts, args.jlens_tokens, args.jlens_dim_batch,
                                           min(jl.source_layers)),
                               f"{jl.n_prompts} prompts x {args.jlens_tokens} tokens"))
        return
    sizes = sorted(set(args.jlens_prompts))
    # decoded and re-tokenised by TL (a margin of 8 tokens, then cut at max_seq_len)
    prompts = [model.tokenizer.decode(s) for s in jlens_data(model, args, margin=8)]
    parts, elapsed, done = [], 0.0, 0
    for size in sizes:
        t0 = time.perf_counter()
        parts.append(JacobianLens.fit(model, prompts[done:size], corpus="shakespeare train plays",
                                      source_layers=args.jlens_layers, dim_batch=args.jlens_dim_batch,
                                      max_seq_len=args.jlens_tokens, skip_first_positions=args.jlens_skip,
                                      show_progress=False))
        jl = JacobianLens.merge(parts) if len(parts) > 1 else parts[0]
        elapsed += time.perf_counter() - t0
        done = size
        families.append(Family(f"J-lens {size}", TunedLens.from_jacobian_lens(jl, model), elapsed,
                               jlens_flops(model, size, args.jlens_tokens, args.jlens_dim_batch, min(jl.source_layers)),
                               f"{size} prompts x {args.jlens_tokens} tokens"))
        print(f"  J-lens on {size} prompts x {args.jlens_tokens} tokens: {elapsed:.0f} s", flush=True)
    if args.save_jlens:
        jl.save(args.save_jlens)


def jlens_data(model, args, margin: int = 0) -> "torch.Tensor":
    """The token ids of the largest J-lens's prompts, ``[prompts, jlens_tokens + margin]``, from the training plays."""
    from tl_tunedlens import load_tokens

    size, length = max(args.jlens_prompts), args.jlens_tokens + 8
    seqs = load_tokens("shakespeare", model.tokenizer, length, split="train", max_tokens=size * length).sequences
    return seqs[:size, :args.jlens_tokens + margin]


def fit_ours_on_jlens_data(model, args, families: list[Family]) -> None:
    """Our least-squares start on exactly the J-lens's tokens (equal data), the preset's ridge."""
    from tl_tunedlens import TunedLens
    from tl_tunedlens.training import TrainConfig, lstsq_init_

    tokens = jlens_data(model, args)
    lens, t0 = TunedLens.from_model(model), time.perf_counter()
    lstsq_init_(lens, model, tokens, ridge=TrainConfig().ridge)
    seconds = time.perf_counter() - t0
    families.append(Family("ours lstsq, J-lens data", lens, seconds, lstsq_flops(model, tokens.numel()),
                           f"{tokens.numel()} tokens ({len(tokens)} prompts x {tokens.shape[1]})"))
    print(f"  least squares on the J-lens's {tokens.numel()} tokens: {seconds:.1f} s", flush=True)


def fit_ours(model, args, families: list[Family]) -> None:
    """The laptop preset; with --steps, the same run continued (its start is the preset's lens)."""
    from bench_train import flops

    from tl_tunedlens import TunedLens, load_tokens, train_lens
    from tl_tunedlens.training import TrainConfig

    cfg = TrainConfig(lstsq_tokens=args.lstsq_tokens, steps=args.steps, checkpoint_every=0)
    need = math.ceil((cfg.lstsq_tokens + cfg.steps * cfg.tokens_per_step) / SEQ_LEN) * SEQ_LEN
    train = load_tokens("shakespeare", model.tokenizer, SEQ_LEN, split="train", max_tokens=need).sequences
    lens, start = TunedLens.from_model(model), {}

    def on_step(run):
        if run.step == 0:
            start.update(state={k: v.clone() for k, v in lens.state_dict().items()}, seconds=run.elapsed)

    result = train_lens(model, lens, train, cfg, progress=False, on_step=on_step)
    fit_tokens = result.info.get("lstsq_tokens", cfg.lstsq_tokens)
    preset = TunedLens.from_model(model)
    preset.load_state_dict(start["state"])
    families.append(Family("ours lstsq (laptop preset)", preset, start["seconds"], lstsq_flops(model, fit_tokens),
                           f"{fit_tokens} tokens"))
    print(f"  least squares on {fit_tokens} tokens: {start['seconds']:.0f} s", flush=True)
    if cfg.steps:
        step_flops = cfg.steps * cfg.tokens_per_step * sum(flops("train", model.cfg.n_layers, model.cfg.d_model,
                                                                 model.cfg.d_vocab, block_params(model)).values())
        families.append(Family(f"ours lstsq + {cfg.steps} adam", lens, result.seconds,
                               lstsq_flops(model, fit_tokens) + step_flops,
                               f"{fit_tokens} + {result.tokens_seen} tokens"))
        print(f"  + {cfg.steps} Adam steps: {result.seconds:.0f} s", flush=True)


def score_quality(model, families: list[Family], sequences, key: str) -> None:
    """Per-layer KL, CE, entropy and top-1 of every family on ``sequences``, into ``scores[key]``."""
    from tl_tunedlens.analysis import LensEvaluator
    from tl_tunedlens.core.backend import capture_residuals, flatten_tokens

    lenses = {f.name: f.lens for f in families}
    first = families[0].lens
    evaluator = LensEvaluator(lenses, first.unembed)
    for i in range(0, len(sequences), 2):
        batch = sequences[i:i + 2]
        evaluator.add(flatten_tokens(capture_residuals(model, batch, first.hook_names)[:, :, :-1]), batch[:, 1:].flatten())
    layers = evaluator.metrics("", first.hook_names, float("nan"))["layers"][:-1]
    for f in families:
        f.scores[key] = {m: [entry[f.name][m] for entry in layers] for m in ("kl", "ce", "entropy", "top1")}


def score_causal(model, families: list[Family], tokens, args) -> None:
    """Spearman of lens vs model mean-ablation effects over each lens's causal basis, pooled over layers."""
    from tl_tunedlens.analysis import ablation_effects, causal_basis, spearman

    for f in families:
        lens_fx, model_fx = [], []
        for layer in args.causal_layers:
            basis = causal_basis(f.lens, model, tokens, layer, k=args.causal_k, max_iter=args.causal_max_iter)
            effects = ablation_effects(f.lens, model, tokens, layer, basis.directions)
            lens_fx.append(effects.lens_effects)
            model_fx.append(effects.model_effects)
        f.scores["spearman"] = spearman(torch.cat(lens_fx), torch.cat(model_fx))


@torch.no_grad()
def score_steering(model, families: list[Family], contexts, targets: list[int], args) -> None:
    """Mean increase of the model's log-prob of each target per unit alpha, steering at the last position."""
    base = model(contexts)[:, -1].log_softmax(-1)
    for f in families:
        gains = []
        for layer in args.steer_layers:
            for target in targets:
                hooks = f.lens.steering_hooks(model, target, [layer], alpha=args.steer_alpha, positions=[-1])
                out = model.run_with_hooks(contexts, fwd_hooks=hooks)[:, -1].log_softmax(-1)
                gains.append(float((out[:, target] - base[:, target]).mean()) / args.steer_alpha)
        f.scores["steering"] = sum(gains) / len(gains)


def markdown(families: list[Family], has_ood: bool) -> str:
    def mean(values):
        return sum(values[1:]) / len(values[1:])   # layers 1..n-1: the embeddings are left out

    head = ["family", "fit data", "fit s", "fit TFLOP (est.)", "KL", "CE", "entropy", "top-1"]
    head += ["KL out of domain"] * has_ood + ["causal Spearman", "steering dlogp/alpha"]
    rows = []
    for f in families:
        held = f.scores["heldout"]
        row = [f.name, f.data, "-" if math.isnan(f.fit_s) else f"{f.fit_s:.0f}", f"{f.flops / 1e12:.1f}"]
        row += [f"{mean(held[m]):.3f}" for m in ("kl", "ce", "entropy", "top1")]
        row += [f"{mean(f.scores['ood']['kl']):.3f}"] if has_ood else []
        row += [f"{f.scores['spearman']:.3f}", f"{f.scores['steering']:.3f}"]
        rows.append(row)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def write_json(families: list[Family], path: str) -> None:
    """Every family's fit facts and scores (per-layer lists), atomically."""
    from tl_tunedlens.artifacts.files import write_json_atomic

    write_json_atomic(path, [{"name": f.name, "data": f.data, "fit_s": None if math.isnan(f.fit_s) else f.fit_s,
                              "flops": f.flops, "scores": f.scores} for f in families])


def figure(families: list[Family], path: str, title: str) -> None:
    import plotly.graph_objects as go

    from tl_tunedlens import LensError
    from tl_tunedlens.viz.plots import write_html, write_png

    fig = go.Figure()
    for f in families:
        kl = f.scores["heldout"]["kl"]
        fig.add_trace(go.Scatter(x=list(range(len(kl))), y=kl, mode="lines+markers", name=f.name))
    fig.update_layout(title=title, xaxis_title="lens layer (residual after that many blocks)",
                      yaxis_title="KL(model || lens), nats", yaxis_type="log", template="plotly_white")
    write_html(fig, path)
    try:
        write_png(fig, Path(path).with_suffix(".png"), scale=2)
    except LensError as err:
        print(f"no PNG: {err}")


def main() -> int:
    from tl_tunedlens import load_model, load_tokens
    from tl_tunedlens.training import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", default="lens_families.html", help="per-layer KL figure (HTML; PNG beside it)")
    parser.add_argument("--jlens-prompts", type=int, nargs="+", default=[4, 8, 16], help="J-lens snapshots (prompts)")
    parser.add_argument("--jlens-tokens", type=int, default=64, help="tokens per J-lens prompt (TL's max_seq_len)")
    parser.add_argument("--jlens-skip", type=int, default=16, help="TL's skip_first_positions (its default: 16)")
    parser.add_argument("--jlens-dim-batch", type=int, default=32, help="TL's dim_batch (its default 8; same FLOPs)")
    parser.add_argument("--jlens-layers", type=int, nargs="+", help="J-lens source layers (default: all, 0..n-2; "
                        "J-lens layer l is lens layer l + 1, the others stay the logit lens)")
    parser.add_argument("--save-jlens", help="write the largest J-lens here (.pt, TL's format)")
    parser.add_argument("--jlens-from", help="score this saved J-lens (.pt) instead of fitting one (fit time: -)")
    parser.add_argument("--json", help="write every family's per-layer scores here (for figures)")
    parser.add_argument("--lstsq-tokens", type=int, default=TrainConfig().lstsq_tokens,
                        help="tokens of our least-squares start (default: the laptop preset's)")
    parser.add_argument("--steps", type=int, default=8, help="Adam steps x 512 tokens after it (0: no refined row)")
    parser.add_argument("--eval-tokens", type=int, default=2048, help="held-out tokens scored")
    parser.add_argument("--ood-data", help="another text (anything load_tokens reads) for an out-of-domain KL column")
    parser.add_argument("--causal-layers", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--causal-k", type=int, default=4, help="causal directions per layer and family")
    parser.add_argument("--causal-tokens", type=int, default=64, help="held-out positions of the causal scores")
    parser.add_argument("--causal-max-iter", type=int, default=10, help="L-BFGS iterations per direction")
    parser.add_argument("--steer-layers", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--steer-alpha", type=float, default=0.25)
    parser.add_argument("--steer-targets", type=int, default=8, help="target tokens drawn from the held-out text")
    parser.add_argument("--steer-contexts", type=int, default=4, help="held-out contexts of 32 tokens")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes at tiny sizes")
    args = parser.parse_args()
    if args.quick:
        args.jlens_prompts, args.jlens_tokens, args.jlens_skip, args.jlens_dim_batch = [1, 2], 12, 4, 96
        args.jlens_layers = [26, 27, 28]   # a short backward: the other layers stay the logit lens
        args.lstsq_tokens, args.steps, args.eval_tokens = 1024, 1, 256
        args.causal_layers, args.causal_k, args.causal_tokens, args.causal_max_iter = [20], 2, 16, 3
        args.steer_layers, args.steer_targets, args.steer_contexts = [20], 2, 2
    torch.set_num_threads(2)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    model = load_model("smollm2-135m", backend="bridge", compatibility_mode=False)
    tok = model.tokenizer
    held = load_tokens("shakespeare", tok, SEQ_LEN, split="heldout", max_tokens=args.eval_tokens).sequences
    print(f"SmolLM2-135M (raw Bridge); held-out: {held.numel()} tokens; fitting:", flush=True)

    from tl_tunedlens import LogitLens

    families = [Family("logit lens", LogitLens.from_model(model))]
    fit_jlens(model, args, families)
    fit_ours_on_jlens_data(model, args, families)
    fit_ours(model, args, families)
    print(f"scoring {len(families)} families [{time.perf_counter() - t_start:.0f} s]", flush=True)
    score_quality(model, families, held, "heldout")
    if args.ood_data:
        ood = load_tokens(args.ood_data, tok, SEQ_LEN, split="all", max_tokens=args.eval_tokens).sequences
        score_quality(model, families, ood, "ood")
    score_causal(model, families, held[:1, :args.causal_tokens], args)
    gen = torch.Generator().manual_seed(0)
    pool = held.flatten().unique()
    targets = pool[torch.randperm(len(pool), generator=gen)[:args.steer_targets]].tolist()
    score_steering(model, families, held[:args.steer_contexts, :32].to(model.cfg.device), targets, args)
    print(markdown(families, bool(args.ood_data)))
    print(f"means over lens layers 1..{model.cfg.n_layers - 1} (nats; top-1: agreement with the model's top token); "
          f"{held.numel()} held-out tokens; causal: {args.causal_k} directions at layers {args.causal_layers} on "
          f"{args.causal_tokens} tokens; steering: alpha={args.steer_alpha} at layers {args.steer_layers}, "
          f"{len(targets)} tokens x {min(args.steer_contexts, len(held))} contexts")
    if args.json:
        write_json(families, args.json)
    figure(families, args.figure, f"Lens families on SmolLM2-135M: held-out KL per layer ({held.numel()} tokens)")
    print(f"figure written to {args.figure}; whole run {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
