"""Training throughput and peak memory: tl_tunedlens vs the reference ``tuned-lens==0.2.0``.

All 30 layers of SmolLM2-135M, sequences of 256 Shakespeare tokens, SGD-Nesterov (paper defaults),
the same tokens for both. Each side runs in its own subprocess (clean peak memory); a third
subprocess measures this machine's fp32 and bf16 rates of the two unembedding-shaped products (logits,
and their input gradient, whose long reduction runs faster), which give the FLOP bounds
(:func:`bound_per_s`; ours with ``--matmul-dtype bfloat16`` is compared against the bf16 bound); the
``ours`` and ``eval`` rows also measure that rate in their own process just before and after their
timed part and take their bound from it (:class:`LocalRate`: a shared host's speed drifts). A fourth
trains ours on a HookedTransformer and on a TransformerBridge of the same weights, alternating in one
process (``backends``: the Bridge's tokens/s relative to HookedTransformer's, same load for both).
Not a test: run ``.venv/bin/python bench/bench_train.py`` (a few minutes).

The reference needs ``pip install --no-deps tuned-lens==0.2.0`` (only its lens classes are used;
its training loop is reproduced in ``bench/reference_loop.py``: one forward with ``output_hidden_states``,
the model's log-softmax as target, per-layer KL with ``backward`` layer by layer).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

WORKERS = ("matmul", "ours", "ours_bf16", "backends", "ref", "eval", "eval_bf16")


class PeakRSS:
    """Samples the resident set size every few ms in a thread; ``peak`` in MiB."""

    def __init__(self):
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0.0, threading.Event()

    def sample(self) -> float:
        return self.proc.memory_info().rss / 2**20

    def __enter__(self):
        self.base = self.sample()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.sample())


def _tokens(seq_len: int, n_tokens: int):
    from transformers import AutoTokenizer

    from tl_tunedlens.data import load_tokens
    from tl_tunedlens.models.embedded import ensure_smollm2_cache

    tok = AutoTokenizer.from_pretrained(str(ensure_smollm2_cache() / "tokenizer"))
    return load_tokens("shakespeare", tok, seq_len, split="train", max_tokens=n_tokens).sequences


def matmul_rates(dtype_name: str = "float32", reps: int = 5) -> dict[str, float]:
    """This machine's best rates (GFLOP/s, best of ``reps``) of the two unembedding-shaped products, the
    fastest way torch runs them here (into preallocated outputs; fp32 over both weight layouts, lower
    precisions in the transposed layout that their lens products use):
    ``fwd`` ``[512, 576] @ [576, 49152]`` (logits) and ``bwd`` ``[512, 49152] @ [49152, 576]`` (their
    input gradient). The long reduction of ``bwd`` runs faster than ``fwd`` on a CPU."""
    import torch

    dtype = getattr(torch, dtype_name)
    m, d, v = 512, 576, 49152
    w = torch.randn(d, v, dtype=dtype)
    w_t = w.T.contiguous()
    x, b, g = torch.randn(m, d, dtype=dtype), torch.randn(v, dtype=dtype), torch.randn(m, v, dtype=dtype)
    z, gx = torch.empty(m, v, dtype=dtype), torch.empty(m, d, dtype=dtype)
    products = {"fwd": [lambda: torch.addmm(b, x, w_t.T, out=z), lambda: torch.addmm(b, x, w, out=z)],
                "bwd": [lambda: torch.mm(g, w_t, out=gx), lambda: torch.mm(g, w.T, out=gx)]}
    if dtype != torch.float32:   # lower-precision lens products always use the transposed copy (core.vocab)
        products = {k: fns[:1] for k, fns in products.items()}
    def rate(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return 2 * m * d * v / (time.perf_counter() - t0) / 1e9

    rates = {}
    for name, fns in products.items():
        t0 = time.perf_counter()
        found = [rate(fn) for fn in fns]
        kept = [fn for fn, r in zip(fns, found) if r >= max(found) / 4]   # a far slower layout is not repeated
        for _ in range(reps - 1):
            if time.perf_counter() - t0 > 5.0:   # slow products (bf16 without bf16 instructions): fewer repeats
                break
            found += [rate(fn) for fn in kept]
        rates[name] = max(found)
    return rates


def worker_matmul(args) -> dict:
    """This machine's fp32 and bf16 matmul rates (:func:`matmul_rates`)."""
    return {"float32": matmul_rates("float32"), "bfloat16": matmul_rates("bfloat16")}


class LocalRate:
    """The matmul rates measured in the worker itself just before and just after its timed part (their
    mean): the FLOP bound of that worker's row, so a machine whose speed drifts between subprocesses
    (a shared host) does not skew the "of FLOP bound" column."""

    def __init__(self, dtype_name: str):
        self.dtype_name, self.before, self.after = dtype_name, None, None

    def __enter__(self):
        self.before = matmul_rates(self.dtype_name, reps=3)
        return self

    def __exit__(self, *exc):
        self.after = matmul_rates(self.dtype_name, reps=3)

    @property
    def rates(self) -> dict[str, float]:
        return {k: (self.before[k] + self.after[k]) / 2 for k in self.before}


def worker_ours_bf16(args, seqs) -> dict:
    return worker_ours(args, seqs, matmul_dtype="bfloat16")


def worker_ours(args, seqs, matmul_dtype: str = "float32") -> dict:
    from tl_tunedlens import TunedLens, load_model
    from tl_tunedlens.training import TrainConfig, train_lens

    model = load_model("smollm2-135m")
    lens = TunedLens.from_model(model)
    cfg = TrainConfig.preset("paper", steps=args.warmup + args.steps, tokens_per_step=args.tokens_per_step,
                             micro_batch=args.micro_batch, chunk_tokens=args.chunk_tokens, checkpoint_every=0,
                             matmul_dtype=matmul_dtype)
    with LocalRate(matmul_dtype) as rate, PeakRSS() as mem:
        res = train_lens(model, lens, seqs, cfg, progress=False)
    timed = res.step_seconds[args.warmup:]
    return {"tok_s": args.steps * res.info["tokens_per_step"] / sum(timed), "peak_mib": mem.peak,
            "base_mib": mem.base, "loss": res.losses[-1], "rates_local": rate.rates}


def worker_backends(args, seqs) -> dict:
    """Ours on a HookedTransformer and on a TransformerBridge (compatibility mode) of the same weights, in one
    process, alternating: ``--rounds`` rounds of one ``train_lens`` run per backend (``--warmup`` untimed steps,
    then ``--steps`` timed ones), so both see the same machine load. Median tokens/s per backend."""
    import statistics

    from tl_tunedlens import TunedLens, load_model
    from tl_tunedlens.training import TrainConfig, train_lens

    models = {backend: load_model("smollm2-135m", backend=backend) for backend in ("hooked", "bridge")}
    cfg = TrainConfig.preset("paper", steps=args.warmup + args.steps, tokens_per_step=args.tokens_per_step,
                             micro_batch=args.micro_batch, chunk_tokens=args.chunk_tokens, checkpoint_every=0)
    rates: dict[str, list[float]] = {backend: [] for backend in models}
    fused = {}
    for _ in range(args.rounds):
        for backend, model in models.items():
            lens = TunedLens.from_model(model)
            fused[backend] = lens.unembed.fusable
            res = train_lens(model, lens, seqs, cfg, progress=False)
            timed = res.step_seconds[args.warmup:]
            rates[backend].append(args.steps * res.info["tokens_per_step"] / sum(timed))
    return {f"tok_s_{b}": statistics.median(r) for b, r in rates.items()} | {"rates": rates, "fused": fused}


def worker_eval_bf16(args, seqs) -> dict:
    return worker_eval(args, seqs, matmul_dtype="bfloat16")


def worker_eval(args, seqs, matmul_dtype: str = "float32") -> dict:
    """``evaluate_lenses`` (logit + tuned lens, every layer, all metrics) on ``--eval-seqs`` sequences,
    ``--eval-rounds`` times after one untimed sequence, each round between two matmul-rate probes
    (:class:`LocalRate`); the medians of positions/s and of each round's fraction of its own FLOP
    bound. With bf16 products, also the largest KL difference from fp32."""
    import statistics

    import torch

    from tl_tunedlens import TunedLens, load_model
    from tl_tunedlens.analysis import evaluate_lenses

    model = load_model("smollm2-135m")
    lens = TunedLens.from_model(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(0.01 * torch.randn(p.shape, generator=gen))
    dtype = getattr(torch, matmul_dtype)
    evaluate_lenses(model, seqs[:1], tuned=lens, chunk_tokens=args.eval_chunk_tokens, matmul_dtype=dtype)
    speeds, fractions, rates = [], [], []
    with PeakRSS() as mem:
        for _ in range(args.eval_rounds):
            with LocalRate(matmul_dtype) as rate:
                t0 = time.perf_counter()
                metrics = evaluate_lenses(model, seqs[1:1 + args.eval_seqs], tuned=lens,
                                          chunk_tokens=args.eval_chunk_tokens, matmul_dtype=dtype)
                seconds = time.perf_counter() - t0
            speeds.append(metrics["tokens"] / seconds)
            rates.append(rate.rates)
            fractions.append(speeds[-1] / bound_per_s(rate.rates, "eval", args.seq_len))
    out = {"tok_s": statistics.median(speeds), "peak_mib": mem.peak, "base_mib": mem.base,
           "loss": sum(e["tuned"]["kl"] for e in metrics["layers"][:-1]), "rates_local": {k: statistics.median(r[k] for r in rates) for k in rates[0]},
           "of_bound": statistics.median(fractions), "rounds": [round(f, 3) for f in fractions]}
    if "precision" in metrics:
        out["kl_error"] = metrics["precision"]["max_kl_error"]
    return out


def worker_ref(args, seqs) -> dict:
    import torch
    from reference_loop import reference_train

    from tl_tunedlens.models.embedded import load_hf_smollm2

    hf_model, _ = load_hf_smollm2(torch.float32)
    total = args.warmup + args.steps
    per_step = args.tokens_per_step // seqs.shape[1]
    batches = [seqs[step * per_step:(step + 1) * per_step] for step in range(total)]
    with PeakRSS() as mem:  # its lens in fp32: its bf16 autocast is several times slower on a CPU without bf16
        run = reference_train(hf_model, batches, micro_batch=args.micro_batch, autocast=False)
    return {"tok_s": args.steps * per_step * seqs.shape[1] / sum(run.step_seconds[args.warmup:]),
            "peak_mib": mem.peak, "base_mib": mem.base, "loss": run.losses[-1]}


def flops(kind: str, n_layers=30, d=576, vocab=49152, n_params_blocks=106e6, seq_len=256) -> dict[str, float]:
    """FLOPs per token, split by the product rate that bounds them (``fwd``: logits-shaped products and
    everything else; ``bwd``: the input gradient through the unembedding).

    ``train``: model forward (+attention), the target and every layer's logits, every layer's input
    gradient, translator forward/backward. ``eval``: model forward, the model's own distribution once,
    and every layer's logits for the logit lens and the tuned lens, plus the translators."""
    model = 2 * n_params_blocks + n_layers * 4 * seq_len * d
    if kind == "eval":
        return {"fwd": model + (1 + 2 * n_layers) * 2 * d * vocab + n_layers * 2 * d * d, "bwd": 0.0}
    return {"fwd": model + (n_layers + 1) * 2 * d * vocab + n_layers * 3 * 2 * d * d,
            "bwd": n_layers * 2 * d * vocab}


def bound_per_s(rates: dict[str, float], kind: str, seq_len: int = 256) -> float:
    """The FLOP bound in tokens (positions) per second: each part of :func:`flops` at its product's rate."""
    return 1.0 / sum(f / (rates[k] * 1e9) for k, f in flops(kind, seq_len=seq_len).items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--tokens-per-step", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=2, help="sequences per forward pass, both sides")
    parser.add_argument("--chunk-tokens", type=int, default=512, help="ours: tokens per logits block")
    parser.add_argument("--steps", type=int, default=2, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=2, help="backends: alternating rounds per backend")
    parser.add_argument("--eval-seqs", type=int, default=4, help="eval: timed sequences (of --seq-len)")
    parser.add_argument("--eval-rounds", type=int, default=3, help="eval: timed rounds (medians are reported)")
    parser.add_argument("--eval-chunk-tokens", type=int, default=512, help="eval: positions per logits block")
    parser.add_argument("--only", choices=WORKERS, nargs="+", default=list(WORKERS))
    parser.add_argument("--force-bf16", action="store_true", help="run ours_bf16 even where bf16 matmuls are slow")
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    if args.worker:
        n_tokens = max((args.warmup + args.steps) * args.tokens_per_step, (1 + args.eval_seqs) * args.seq_len)
        seqs = None if args.worker == "matmul" else _tokens(args.seq_len, n_tokens)
        result = worker_matmul(args) if args.worker == "matmul" else globals()[f"worker_{args.worker}"](args, seqs)
        print("RESULT " + json.dumps(result))
        return 0

    results = {}
    for name in args.only:
        slow_bf16 = "matmul" in results and results["matmul"]["bfloat16"]["fwd"] < results["matmul"]["float32"]["fwd"]
        if name in ("ours_bf16", "eval_bf16") and slow_bf16 and not args.force_bf16:
            print(f"{name}: skipped, bf16 matmuls are slower than fp32 on this CPU (no bf16 instructions); "
                  "--force-bf16 runs it anyway", file=sys.stderr)
            continue
        cmd = [sys.executable, __file__, "--worker", name] + [a for a in sys.argv[1:]
                                                             if a not in args.only and a not in ("--only", "--force-bf16")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        results[name] = json.loads(line[-1][7:])
        print(f"{name}: {results[name]}", file=sys.stderr)
    print(f"SmolLM2-135M, all 30 layers, seq {args.seq_len}, {args.tokens_per_step} tokens/step, "
          f"micro-batch {args.micro_batch} sequences, chunk {args.chunk_tokens} tokens (ours), "
          f"{args.steps} timed steps, 2 threads")
    train_f, eval_f = flops("train", seq_len=args.seq_len), flops("eval", seq_len=args.seq_len)
    print(f"FLOPs: {sum(train_f.values()) / 1e9:.2f} GFLOP per training token ({train_f['bwd'] / 1e9:.2f} of them input "
          f"gradients), {sum(eval_f.values()) / 1e9:.2f} GFLOP per evaluated position (logit + tuned lens, every layer)")
    if "matmul" in results:
        for dt, r in results["matmul"].items():
            print(f"matmul rates ({dt}): logits [512x576 @ 576x49152] {r['fwd']:.1f} GFLOP/s, input gradient "
                  f"[512x49152 @ 49152x576] {r['bwd']:.1f} GFLOP/s -> FLOP bound {bound_per_s(r, 'train'):.1f} "
                  f"tokens/s training, {bound_per_s(r, 'eval'):.1f} positions/s evaluation")
    labels = {"ours": ("ours", "fp32"), "ours_bf16": ("ours", "bf16 matmul"), "ref": ("reference", "fp32"),
              "eval": ("ours eval", "fp32"), "eval_bf16": ("ours eval", "bf16 matmul")}
    print(f"{'impl':12} {'precision':11} {'tokens/s':>9} {'peak RSS MiB':>13} {'peak-base MiB':>14} "
          f"{'of FLOP bound':>14} {'fwd GFLOP/s':>11} {'last loss':>10}")
    for name in ("ours", "ours_bf16", "ref", "eval", "eval_bf16"):
        if name in results:
            r = results[name]
            dt = "bfloat16" if name.endswith("_bf16") else "float32"
            rates = r.get("rates_local") or results.get("matmul", {}).get(dt)   # measured around the row itself
            bound = bound_per_s(rates, "eval" if name.startswith("eval") else "train") if rates else None
            frac = f"{r['of_bound']:.2f}" if "of_bound" in r else f"{r['tok_s'] / bound:.2f}" if bound else "-"
            impl, prec = labels[name]
            print(f"{impl:12} {prec:11} {r['tok_s']:>9.2f} {r['peak_mib']:>13.0f} {r['peak_mib'] - r['base_mib']:>14.0f} "
                  f"{frac:>14} {rates['fwd'] if rates else float('nan'):>11.1f} {r['loss']:>10.3f}" + (f"  (KL within {r['kl_error']:.2g} nats of fp32)" if "kl_error" in r else "")
                  + (f"  (rounds: {', '.join(f'{f:.2f}' for f in r['rounds'])} of their bounds)" if "rounds" in r else ""))
    if "backends" in results:
        b = results["backends"]
        for backend in ("hooked", "bridge"):
            bound = bound_per_s(results["matmul"]["float32"], "train") if "matmul" in results else None
            frac = f"{b[f'tok_s_{backend}'] / bound:.2f}" if bound else "-"
            print(f"{'ours ' + backend:12} {'fp32':11} {b[f'tok_s_{backend}']:>9.2f} {'-':>13} {'-':>14} {frac:>14} "
                  f"{'-':>11} {'-':>10}")
        print(f"backends (one process, {args.rounds} alternating rounds, fp32, fused vocabulary path: {b['fused']}): "
              f"HookedTransformer {b['tok_s_hooked']:.2f} tokens/s, TransformerBridge {b['tok_s_bridge']:.2f} tokens/s; "
              f"bridge/hooked {b['tok_s_bridge'] / b['tok_s_hooked']:.2f}x (target >= 0.9)")
    if "ref" in results:
        r = results["ref"]
        for name in ("ours", "ours_bf16"):
            if name in results:
                o = results[name]
                print(f"{name}/ref: speed {o['tok_s'] / r['tok_s']:.2f}x (target >= 1.5x), peak RSS "
                      f"{o['peak_mib'] / r['peak_mib']:.2f}x, training memory above the loaded model "
                      f"{(o['peak_mib'] - o['base_mib']) / max(r['peak_mib'] - r['base_mib'], 1):.2f}x (target <= 0.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
