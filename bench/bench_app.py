"""The explorer's latency on SmolLM2-135M: cold start of ``tl-tunedlens serve`` and time per prompt.

Per prompt, through the whole HTTP layer (werkzeug's test client: routing, JSON parsing, the
answer encoded as JSON) minus the socket: the model run once plus every lens streamed layer by
layer ("model+lenses"), the figures and table ("figures"), and the total; then the same prompt with
another statistic (cached: no model run) and another position. Repeats take the median; the
analysis cache is cleared between repeats. Cold start: a fresh ``tl-tunedlens serve`` process,
from its start to its first answer on a socket.

A shared machine slows everything, so each row also gives, measured in the same run, the floor of
the request: the vocabulary products it cannot avoid (one ``[tokens, d_model] @ W_U`` per lens layer,
``n_layers x lenses`` of them), and the request's total as a multiple of that floor ("x floor"),
which carries over from a busy machine to a quiet one better than seconds do.

Not a test: ``.venv/bin/python bench/bench_app.py [--lens DIR] [--repeats 3]`` (a few minutes).
Without ``--lens`` the tuned lenses are untrained copies, which cost exactly as much as trained ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HAMLET = ("To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer The slings and "
          "arrows of outrageous fortune, Or to take arms against a sea of troubles And by opposing end them. To die, "
          "to sleep; No more; and by a sleep to say we end The heart-ache and the thousand natural shocks That flesh "
          "is heir to: 'tis a consummation Devoutly to be wish'd.")


def _opener():
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy


def cold_start(lens_dirs: list[str], text: str) -> dict[str, float]:
    """Seconds from starting ``tl-tunedlens serve`` to its URL, and to its first answer to ``text``."""
    cli = Path(sys.executable).with_name("tl-tunedlens")
    argv = [str(cli), "serve", "--port", "0", "--quiet"] + (["--lens", *lens_dirs] if lens_dirs else [])
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        up = time.perf_counter() - start
        if "http://" not in line:
            raise RuntimeError(f"serve did not start: {line!r} {proc.stderr.read()[:500]}")
        url = line.split()[2]
        body = json.dumps({"text": text}).encode()
        request = urllib.request.Request(url + "api/analyze", data=body, headers={"Content-Type": "application/json"})
        with _opener().open(request, timeout=300) as response:
            response.read()
        return {"serving": up, "first_answer": time.perf_counter() - start}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def vocabulary_floor(model, n_tokens: int, n_products: int) -> float:
    """Seconds of ``n_products`` products ``[n_tokens, d_model] @ W_U`` (median of 5 timings of 3)."""
    import torch

    x, w_u = torch.randn(n_tokens, model.cfg.d_model), model.W_U
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(3):
            x @ w_u
        times.append((time.perf_counter() - start) / 3)
    return statistics.median(times) * n_products


def per_prompt(explorer, texts: list[str], repeats: int) -> list[dict]:
    from werkzeug.test import Client

    from tl_tunedlens.app.server import ExplorerApp

    client = Client(ExplorerApp(explorer))
    rows = []
    for text in texts:
        runs: dict[str, list[float]] = {"model": [], "figures": [], "total": [], "restat": [], "position": [],
                                        "floor": []}
        size = 0
        for _ in range(repeats):
            explorer.cache.clear()
            start = time.perf_counter()
            response = client.post("/api/analyze", json={"text": text, "stat": "kl"})
            runs["total"].append(time.perf_counter() - start)
            data = response.json
            runs["model"].append(data["seconds"]["model_and_lenses"])
            runs["figures"].append(data["seconds"]["figures"])
            size = len(response.data)
            start = time.perf_counter()
            client.post("/api/analyze", json={"text": text, "stat": "entropy"})
            runs["restat"].append(time.perf_counter() - start)
            start = time.perf_counter()
            client.post("/api/analyze", json={"text": text, "stat": "entropy", "position": 3, "what": "position"})
            runs["position"].append(time.perf_counter() - start)
            runs["floor"].append(vocabulary_floor(explorer.model, len(data["tokens"]),
                                                  explorer.model.cfg.n_layers * len(explorer.lenses)))
        rows.append({"tokens": len(data["tokens"]), "MB": size / 1e6,
                     **{k: statistics.median(v) for k, v in runs.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lens", nargs="*", default=[], help="trained lens folders (default: untrained copies)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 32, 63], help="prompt lengths (tokens)")
    parser.add_argument("--tuned", type=int, nargs="+", default=[0, 1, 2], help="numbers of tuned lenses shown")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold start")
    args = parser.parse_args()

    import torch

    from tl_tunedlens import TunedLens, load_model
    from tl_tunedlens.app import Explorer

    model = load_model("smollm2-135m")
    ids = model.to_tokens(HAMLET)[0]
    texts = [model.tokenizer.decode(ids[:n].tolist()) for n in args.tokens]
    lenses = [TunedLens.load(d, model) for d in args.lens] or [TunedLens.from_model(model)]
    print(f"SmolLM2-135M, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, median of {args.repeats}; "
          f"seconds per request through the HTTP layer (no socket); load average {os.getloadavg()[0]:.1f}")
    header = f"{'tuned lenses':>12} {'tokens':>6} {'model+lenses':>12} {'figures':>8} {'total':>7} {'JSON MB':>8} " \
             f"{'new stat':>9} {'new position':>12} {'floor':>6} {'x floor':>7}"
    print(header)
    print("-" * len(header))
    for n_tuned in args.tuned:
        explorer = Explorer(model, {f"tuned {i}": lenses[i % len(lenses)] for i in range(n_tuned)})
        for row in per_prompt(explorer, texts, args.repeats):
            print(f"{n_tuned:>12} {row['tokens']:>6} {row['model']:>12.2f} {row['figures']:>8.2f} {row['total']:>7.2f} "
                  f"{row['MB']:>8.2f} {row['restat']:>9.2f} {row['position']:>12.3f} {row['floor']:>6.2f} "
                  f"{row['total'] / row['floor']:>7.1f}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f} (above the CPU count, the machine was shared)")
    if not args.no_cold:
        cold = cold_start(args.lens, texts[min(1, len(texts) - 1)])
        print(f"cold start of `tl-tunedlens serve` ({len(args.lens)} lens folders): serving after "
              f"{cold['serving']:.1f} s, first answer ({args.tokens[min(1, len(texts) - 1)]} tokens) after "
              f"{cold['first_answer']:.1f} s")


if __name__ == "__main__":
    main()
