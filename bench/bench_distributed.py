"""Data-parallel scaling on this machine: 2 ranks x 1 thread (torchrun, gloo) vs 1 process x 2 threads.

    python bench/bench_distributed.py [--steps 4] [--tokens-per-step 512] [--seq-len 128]

Trains the same SmolLM2-135M lens (all 30 layers, identity start, SGD-Nesterov) in three set-ups, each
in its own process(es), one after the other in one run: 1 process x 1 thread, 1 process x 2 threads,
and ``torchrun --nproc_per_node 2`` with 1 thread per rank. Tokens/s is the global batch over the mean
step time, the first step left out (warm-up). Prints a table: the speed-up over 1 x 1 thread and the
scaling efficiency (speed-up / workers), and 2 ranks vs 2 threads side by side. Random token ids
(throughput does not depend on the text).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from tl_tunedlens import TunedLens, load_model
    from tl_tunedlens.training import TrainConfig, train_lens
    from tl_tunedlens.core.distributed import init_distributed

    dist = init_distributed("cpu", timeout_s=1200)
    model = load_model("smollm2-135m")
    seqs = torch.randint(0, model.cfg.d_vocab, (64, args.seq_len), generator=torch.Generator().manual_seed(0))
    lens = TunedLens.from_model(model)
    cfg = TrainConfig.preset("paper", steps=args.steps, tokens_per_step=args.tokens_per_step, checkpoint_every=0,
                             chunk_tokens=256)
    result = train_lens(model, lens, seqs, cfg, progress=False, dist=dist)
    steps = result.step_seconds[1:] or result.step_seconds
    if dist.is_main:
        print("RESULT " + json.dumps({"tok_s": result.info["tokens_per_step"] / (sum(steps) / len(steps)),
                                      "step_s": sum(steps) / len(steps)}))
    dist.close()


def _run(cmd: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return {**json.loads(line[len("RESULT "):]), "wall_s": time.perf_counter() - t0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--tokens-per-step", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    me = str(Path(__file__).resolve())
    common = ["--worker", "--steps", str(args.steps), "--tokens-per-step", str(args.tokens_per_step),
              "--seq-len", str(args.seq_len)]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    setups = [
        ("1 process x 1 thread", 1, [sys.executable, me, *common, "--threads", "1"], 1),
        ("1 process x 2 threads", 1, [sys.executable, me, *common, "--threads", "2"], 2),
        ("2 ranks x 1 thread (torchrun, gloo)", 2,
         [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
          me, *common, "--threads", "1"], 1),
    ]
    rows = []
    for name, workers, cmd, threads in setups:
        rows.append((name, workers * threads, _run(cmd, threads)))
        print(f"{name}: {rows[-1][2]['tok_s']:.1f} tokens/s", file=sys.stderr)
    base = rows[0][2]["tok_s"]
    print(f"SmolLM2-135M, all 30 layers, {args.tokens_per_step} tokens per step (seq {args.seq_len}), "
          f"{args.steps} steps (first left out), CPU cores: {os.cpu_count()}\n")
    print("| set-up | tokens/s | step s | speed-up vs 1 x 1 | scaling efficiency |")
    print("| --- | --- | --- | --- | --- |")
    for name, cores, r in rows:
        print(f"| {name} | {r['tok_s']:.1f} | {r['step_s']:.2f} | {r['tok_s'] / base:.2f}x | {r['tok_s'] / base / cores:.2f} |")
    print(f"\n2 ranks x 1 thread vs 1 process x 2 threads: {rows[2][2]['tok_s'] / rows[1][2]['tok_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
