"""Device check: the lens core, the least-squares start, KL training and evaluation on a CUDA GPU.

Run on a machine with a GPU (never needed by the project; CI runs on CPU):

    python bench/gpu_check.py [--device cuda] [--layers 12] [--d-model 768] [--steps 20]

Builds a random HookedTransformer from config on the device (no hub), then checks, on the device:
untrained tuned lens == logit lens, last lens layer == model log-probs, cache route == hook route,
lstsq start + KL training (loss finite and falling, parameters stay on the device), evaluation
(tuned KL < logit KL), and prints a table with throughput. Then:

- the distributed path in one process (a process group of world size 1: nccl on CUDA, gloo on the CPU):
  training and evaluation through the all-reduces equal the plain run (max |delta| <= 1e-5);
- a bfloat16 frozen model (CUDA only; skipped on the CPU, which has no fast bf16): translators stay
  float32, the untrained lens equals the logit lens, training lowers the loss, tuned KL < logit KL;
- ``n_devices=2`` (with 2+ GPUs; else skipped): captures reach ln_final's device, where the lens trains.

Exits non-zero on any failed check.
"""

from __future__ import annotations

import argparse
import os
import socket
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
    _distributed_checks(model, toks, n_seq, train_cfg, metrics, dev, check)
    _bf16_checks(args, cfg, toks, n_seq, dev, check)
    _multi_device_checks(args, cfg, toks, n_seq, dev, check)
    print(f"{'check':40s} {'ok':4s} detail")
    for cname, ok, detail in checks:
        print(f"{cname:40s} {'yes' if ok else 'NO':4s} {detail}")
    return 0 if all(ok for _, ok, _ in checks) else 1


def _distributed_checks(model, toks, n_seq, train_cfg, metrics, dev, check) -> None:
    """World size 1 through torch.distributed (nccl / gloo): the same lens and metrics as the plain run."""
    from tl_tunedlens import TunedLens
    from tl_tunedlens.analysis import evaluate_lenses
    from tl_tunedlens.training import train_lens
    from tl_tunedlens.core.distributed import init_distributed

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist = init_distributed(dev.type, timeout_s=120)
    plain, ranked = TunedLens.from_model(model), TunedLens.from_model(model)
    train_lens(model, plain, toks[: n_seq // 2], train_cfg, progress=False)
    train_lens(model, ranked, toks[: n_seq // 2], train_cfg, progress=False, dist=dist)
    delta = max((a - b).abs().max().item() for a, b in zip(plain.parameters(), ranked.parameters()))
    check(f"{dist.backend} world 1 lens == plain lens", delta <= 1e-5, f"max |delta| {delta:.1e}")
    ours = evaluate_lenses(model, toks[n_seq // 2:], tuned=ranked, max_tokens=8192, dist=dist)
    ref = evaluate_lenses(model, toks[n_seq // 2:], tuned=ranked, max_tokens=8192)
    gap = max(abs(a["tuned"]["kl"] - b["tuned"]["kl"]) for a, b in zip(ours["layers"], ref["layers"]))
    check(f"{dist.backend} world 1 eval == plain eval", gap <= 1e-6, f"max KL gap {gap:.1e}")
    dist.close()
    del metrics


def _bf16_checks(args, cfg, toks, n_seq, dev, check) -> None:
    """A bfloat16 frozen model on CUDA (float32 translators)."""
    if dev.type != "cuda":
        print("bf16 model: skipped (no CUDA device)")
        return
    from transformer_lens import HookedTransformer

    from tl_tunedlens import LogitLens, TunedLens
    from tl_tunedlens.analysis import evaluate_lenses
    from tl_tunedlens.training import TrainConfig, train_lens

    cfg = cfg.__class__(**{**cfg.to_dict(), "dtype": torch.bfloat16})
    model = HookedTransformer(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tuned = TunedLens.from_model(model)
    check("bf16 model: translators float32", all(p.dtype == torch.float32 for p in tuned.parameters()))
    _, cache = model.run_with_cache(toks[:2, :64], names_filter=tuned.hook_names)
    check("bf16 model: untrained tuned == logit lens",
          torch.equal(tuned.log_probs_from_cache(cache), LogitLens.from_model(model).log_probs_from_cache(cache)))
    result = train_lens(model, tuned, toks[: n_seq // 2], TrainConfig(steps=args.steps, tokens_per_step=args.tokens_per_step,
                        lstsq_tokens=8192, checkpoint_every=0, chunk_tokens=4096), progress=False)
    check("bf16 model: training loss falls", result.losses[-1] < result.losses[0],
          f"{result.losses[0]:.3f} -> {result.losses[-1]:.3f} nats")
    metrics = evaluate_lenses(model, toks[n_seq // 2:], tuned=tuned, max_tokens=8192)
    worse = [r["layer"] for r in metrics["layers"][: args.layers] if r["tuned"]["kl"] > r["logit"]["kl"] + 1e-6]
    check("bf16 model: tuned KL <= logit KL", not worse, f"worse at {worse}" if worse else "")


def _multi_device_checks(args, cfg, toks, n_seq, dev, check) -> None:
    """``n_devices=2``: blocks on two GPUs, the lens on ln_final's."""
    if dev.type != "cuda" or torch.cuda.device_count() < 2:
        print("n_devices=2: skipped (needs 2 CUDA devices)")
        return
    from transformer_lens import HookedTransformer

    from tl_tunedlens import TunedLens
    from tl_tunedlens.training import TrainConfig, train_lens

    model = HookedTransformer(cfg.__class__(**{**cfg.to_dict(), "n_devices": 2}), move_to_device=True).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tuned = TunedLens.from_model(model)
    where = {str(p.device) for p in tuned.parameters()}
    check("n_devices=2: lens on ln_final's device", where == {str(model.unembed.W_U.device)}, ", ".join(sorted(where)))
    result = train_lens(model, tuned, toks[: n_seq // 2], TrainConfig(steps=2, tokens_per_step=args.tokens_per_step,
                        lstsq_tokens=4096, checkpoint_every=0), progress=False)
    check("n_devices=2: training runs", all(v == v for v in result.losses), f"{result.losses}")


if __name__ == "__main__":
    sys.exit(main())
