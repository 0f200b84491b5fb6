"""The explorer's latency on SmolLM2-135M, stage by stage, against its floor; and the cold start of ``tl-tunedlens serve``.

Per prompt, through the HTTP layer (werkzeug's test client on ``POST /api/stream``, minus the socket),
the stages of one request as the server times them: the forward pass, the vocabulary products, the
statistics (fused into the row-block pass, :mod:`tl_tunedlens.analysis.cells`), JSON encoding, and the
server's total; when the first rows (the model's output row) were ready; then, with ``--browser``, the
page in headless Chromium (the test suite's driver): building the figures from the rows, plotly's
drawing, and when the first rows and all rows were drawn. The analysis cache is cleared before each
request; repeats take the median.

The floor, measured in the same run right after each request: the vocabulary products the request
cannot avoid, timed alone (``n_layers x lenses`` products ``[tokens, d_model] @ W_U``, one at a time);
"x floor" is the server's total over it, which carries over from a busy machine to a quiet one better
than seconds do. The request runs the same products batched several layers at a time
(``PRODUCT_ROWS``), which reads ``W_U`` once per batch: its products alone take less than the floor.

Not a test: ``python bench/bench_app.py [--lens DIR] [--repeats 3] [--threads 1 2] [--browser]``.
Without ``--lens`` the tuned lenses are untrained copies, which cost exactly as much as trained ones.
"""

from __future__ import annotations

import argparse
import contextlib
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


def stream_once(client, text: str, seq: int) -> dict:
    """One ``POST /api/stream`` read line by line: the server's stage seconds, and seconds to the first rows."""
    start = time.perf_counter()
    response = client.post("/api/stream", json={"text": text, "page": "bench", "seq": seq}, buffered=False)
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code}: {response.get_data(as_text=True)[:300]}")
    first, done = None, None
    for line in _lines(response):
        message = json.loads(line)
        if message["kind"] == "rows" and first is None:
            first = time.perf_counter() - start
        elif message["kind"] == "done":
            done = message["seconds"]
        elif message["kind"] not in ("start", "rows"):
            raise RuntimeError(f"unexpected answer: {message}")
    return {**done, "first_rows": first, "wall": time.perf_counter() - start}


def _lines(response):
    pending = b""
    for chunk in response.response:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line)


def browser_once(browser, explorer, text: str) -> dict:
    """The page's own timings (milliseconds) for ``text``, typed into a page served by a real server."""
    explorer.cache.clear()
    browser.evaluate("(() => { const t = document.getElementById('text'); t.value = %s;"
                     " document.getElementById('run').click(); })()" % json.dumps(text))
    condition = "document.getElementById('heatmap').dataset.complete === %s" % json.dumps(text)
    if not browser.wait_for(condition, timeout=600):
        raise RuntimeError("the page did not finish drawing: " + str(browser.evaluate("document.body.innerText")[:300]))
    return browser.evaluate("window.explorerTimings[window.explorerTimings.length - 1]")


def per_prompt(explorer, texts: list[str], repeats: int, browser=None) -> list[dict]:
    from werkzeug.test import Client

    from tl_tunedlens.app.server import ExplorerApp

    client = Client(ExplorerApp(explorer))
    rows, seq = [], 0
    n_products = explorer.model.cfg.n_layers * len(explorer.lenses)
    for text in texts:
        runs: dict[str, list[float]] = {}
        n_tokens = len(explorer.tokenize(text)[0])
        for _ in range(repeats):
            explorer.cache.clear()
            seq += 1
            timed = stream_once(client, text, seq)
            timed["floor"] = vocabulary_floor(explorer.model, n_tokens, n_products)
            timed["x_floor"] = timed["total"] / timed["floor"]
            if browser is not None:
                page = browser_once(browser, explorer, text)
                timed.update(build=page["build_ms"] / 1e3, draw=page["draw_ms"] / 1e3,
                             first_drawn=page["first_draw_ms"] / 1e3, all_drawn=page["total_ms"] / 1e3)
            for key, value in timed.items():
                runs.setdefault(key, []).append(value)
        rows.append({"tokens": n_tokens, **{k: statistics.median(v) for k, v in runs.items()}})
    return rows


COLUMNS = [("forward", "forward"), ("products", "products"), ("statistics", "statistics"), ("encoding", "JSON"),
           ("total", "server total"), ("first_rows", "first rows"), ("floor", "floor"), ("x_floor", "x floor")]
BROWSER_COLUMNS = [("build", "build figs"), ("draw", "draw"), ("first_drawn", "first drawn"), ("all_drawn", "all drawn")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lens", nargs="*", default=[], help="trained lens folders (default: untrained copies)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, nargs="+", default=[32, 64], help="prompt lengths (tokens)")
    parser.add_argument("--tuned", type=int, nargs="+", default=[1], help="numbers of tuned lenses shown")
    parser.add_argument("--threads", type=int, nargs="+", default=[0], help="torch threads to compare (0: torch's own)")
    parser.add_argument("--browser", action="store_true", help="also time the page in headless Chromium")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold start")
    args = parser.parse_args()

    import torch

    from tl_tunedlens import TunedLens, load_model
    from tl_tunedlens.app import Explorer

    model = load_model("smollm2-135m")
    ids = model.to_tokens(HAMLET)[0]
    texts = [model.tokenizer.decode(ids[:n].tolist()) for n in args.tokens]
    lenses = [TunedLens.load(d, model) for d in args.lens] or [TunedLens.from_model(model)]
    default_threads = torch.get_num_threads()
    print(f"SmolLM2-135M, {os.cpu_count()} CPUs, median of {args.repeats}; seconds per request "
          f"(POST /api/stream, no socket); load average {os.getloadavg()[0]:.1f}")
    columns = COLUMNS + (BROWSER_COLUMNS if args.browser else [])
    header = f"{'threads':>7} {'tuned':>5} {'tokens':>6} " + " ".join(f"{label:>{max(7, len(label))}}" for _, label in columns)
    print(header)
    print("-" * len(header))
    for threads in args.threads:
        torch.set_num_threads(threads or default_threads)
        for n_tuned in args.tuned:
            explorer = Explorer(model, {f"tuned {i}": lenses[i % len(lenses)] for i in range(n_tuned)})
            with _page(explorer, args.browser) as browser:
                for row in per_prompt(explorer, texts, args.repeats, browser):
                    cells = " ".join(f"{row[key]:>{max(7, len(label))}.{1 if key == 'x_floor' else 2}f}"
                                     for key, label in columns)
                    print(f"{torch.get_num_threads():>7} {n_tuned:>5} {row['tokens']:>6} {cells}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f} (above the CPU count, the machine was shared)")
    torch.set_num_threads(default_threads)
    if not args.no_cold:
        cold = cold_start(args.lens, texts[0])
        print(f"cold start of `tl-tunedlens serve` ({len(args.lens)} lens folders): serving after "
              f"{cold['serving']:.1f} s, first answer ({args.tokens[0]} tokens) after {cold['first_answer']:.1f} s")


@contextlib.contextmanager
def _page(explorer, wanted: bool):
    """A headless Chromium showing the explorer served on a loopback socket (``None`` unless ``wanted``)."""
    if not wanted:
        yield None
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from chromium_cdp import Chromium, find_chromium

    from tl_tunedlens.app.server import Server

    with Server(explorer, "127.0.0.1", 0, quiet=True) as server, \
            Chromium(find_chromium(), width=1500, height=1100, loopback=True, timeout=600) as browser:
        browser.open(server.url)
        if not browser.wait_for("document.body.dataset.ready === '1'", timeout=60):
            raise RuntimeError("the page did not start")
        yield browser


if __name__ == "__main__":
    main()
