"""Device check: the lens core, the least-squares start, KL training and evaluation on a CUDA GPU.

Run on a machine with a GPU (never needed by the project; CI runs on CPU):

    python bench/gpu_check.py [--device cuda] [--layers 12] [--d-model 768] [--steps 20]

Builds a random HookedTransformer from config on the device (no hub), then checks, on the device:
untrained tuned lens == logit lens, last lens layer == model log-probs, cache route == hook route,
lstsq start + KL training (loss finite and falling, parameters stay on the device), evaluation
(tuned KL < logit KL), and prints a table with throughput. Exits non-zero on any failed check.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tokens-per-step", type=int, default=16384)
    parser.add_argument("--matmul-dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from tl_tunedlens import LensRecord, LogitLens, TunedLens
    from tl_tunedlens.analysis import evaluate_lenses
    from tl_tunedlens.training import TrainConfig, train_lens

    dev = torch.device(args.device)
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=args.layers, d_model=args.d_model, d_head=64, n_heads=args.d_model // 64,
        d_mlp=4 * args.d_model, d_vocab=args.vocab, n_ctx=args.seq_len, act_fn="gelu",
        normalization_type="LN", device=str(dev), seed=0,
    )
    model = HookedTransformer(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    checks: list[tuple[str, bool, str]] = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        checks.append((name, bool(ok), detail))

    # Markov-chain "text" so that later layers know more than earlier ones.
    gen = torch.Generator().manual_seed(0)
    n_seq = max(8, 2 * args.tokens_per_step // args.seq_len)
    nxt = torch.randint(0, args.vocab, (args.vocab, 4), generator=gen)
    toks = torch.empty(n_seq, args.seq_len, dtype=torch.long)
    toks[:, 0] = torch.randint(0, args.vocab, (n_seq,), generator=gen)
    for t in range(1, args.seq_len):
        toks[:, t] = nxt[toks[:, t - 1], torch.randint(0, 4, (n_seq,), generator=gen)]
    toks = toks.to(dev)

    tuned, logit = TunedLens.from_model(model), LogitLens.from_model(model)
    check("translators on device", all(p.device.type == dev.type for p in tuned.parameters()), str(dev))
    sample = toks[:2, :64]
    logits, cache = model.run_with_cache(sample, names_filter=tuned.hook_names)
    lp = tuned.log_probs_from_cache(cache)
    check("untrained tuned == logit lens", torch.equal(lp, logit.log_probs_from_cache(cache)))
    check("last layer == model log-probs", torch.equal(lp[-1], logits.log_softmax(-1)))
    record = LensRecord()
    model.run_with_hooks(sample, fwd_hooks=tuned.hooks(record))
    diff = (record.stack() - lp).abs().max().item()
    check("hook route == cache route", diff <= 1e-5, f"max |diff| {diff:.1e}")

    train_cfg = TrainConfig(steps=args.steps, tokens_per_step=args.tokens_per_step, init="lstsq",
                            lstsq_tokens=8192, checkpoint_every=0, chunk_tokens=4096,
                            matmul_dtype=args.matmul_dtype)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = train_lens(model, tuned, toks[: n_seq // 2], train_cfg, progress=False)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    losses = result.losses
    check("training loss finite", all(map(lambda v: v == v and abs(v) != float("inf"), losses)))
    check("training loss falls", losses[-1] < losses[0], f"{losses[0]:.3f} -> {losses[-1]:.3f} nats")
    check("translators still on device", all(p.device.type == dev.type for p in tuned.parameters()))
    metrics = evaluate_lenses(model, toks[n_seq // 2:], tuned=tuned, max_tokens=8192)
    worse = [row["layer"] for row in metrics["layers"][: args.layers]
             if row["tuned"]["kl"] > row["logit"]["kl"] + 1e-6]
    check("tuned KL <= logit KL at every layer", not worse, f"worse at {worse}" if worse else "")

    kl_steps = [s for s in result.step_seconds[1:]] or result.step_seconds
    tok_s = result.info["tokens_per_step"] / (sum(kl_steps) / len(kl_steps))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
    print(f"device: {name}; model: {args.layers} layers, d_model {args.d_model}, vocab {args.vocab}; "
          f"vocabulary matmuls in {args.matmul_dtype}")
    print(f"train: {args.steps} steps x {result.info['tokens_per_step']} tokens in {seconds:.1f} s "
          f"(lstsq {result.info.get('lstsq_seconds')} s); KL step throughput {tok_s:,.0f} tokens/s; "
          f"peak GPU memory {peak:.2f} GiB")
    mean = lambda key: sum(r[key]["kl"] for r in metrics["layers"][1: args.layers]) / (args.layers - 1)  # noqa: E731
    print(f"held-out mean KL over layers 1..{args.layers - 1}: logit {mean('logit'):.3f}, tuned {mean('tuned'):.3f} nats")
    print(f"{'check':40s} {'ok':4s} detail")
    for cname, ok, detail in checks:
        print(f"{cname:40s} {'yes' if ok else 'NO':4s} {detail}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
