"""Which web framework serves the explorer: Gradio or werkzeug, measured side by side in one run.

The same task for each: a page with a button whose handler returns the explorer's biggest figure (two
31 x 64 heatmaps with top-5 hover text, random numbers), drawn with plotly. Measured per framework:
the installed size of it and everything it pulls in (its dependency closure, from the installed
distributions' file lists), a cold ``import`` in a fresh interpreter, the time from starting the
server to its page answering, the median time from a click to the new figure drawn in headless
Chromium, and what it tries to reach beyond this machine: requests the page makes (recorded by
Chromium, whose network is cut off) and connections the server opens (each server runs with
``HTTP(S)_PROXY`` pointing at a recorder on 127.0.0.1 that notes the host asked for and hangs up).

Gradio is not a dependency of tl_tunedlens: run this from a scratch environment that has gradio,
werkzeug, plotly and websocket-client, e.g. ``python -m venv /tmp/gr && /tmp/gr/bin/pip install gradio
werkzeug plotly websocket-client && /tmp/gr/bin/python bench/bench_app_frameworks.py`` (needs the
``chromium`` Debian package). Everything binds to 127.0.0.1; the recorder stops after 10 minutes.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
FRAMEWORKS = {"werkzeug": "werkzeug", "gradio": "gradio", "gradio (analytics off)": "gradio"}
CLICKS = 5


# --- the shared task ------------------------------------------------------------------------
def figure(run: int):
    """Two heatmaps of 31 layers x 64 positions with top-5 hover text, like the explorer's."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rng = random.Random(run)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["logit lens", "tuned lens"])
    for col in (1, 2):
        z = [[rng.random() * 10 for _ in range(64)] for _ in range(31)]
        text = [[f"w{rng.randrange(1000)}" for _ in range(64)] for _ in range(31)]
        hover = [["<br>".join(f"{j}. w{rng.randrange(1000)} {rng.random():.3f}" for j in range(5)) for _ in range(64)]
                 for _ in range(31)]
        fig.add_trace(go.Heatmap(z=z, text=text, customdata=hover, texttemplate="%{text}",
                                 hovertemplate="%{customdata}<extra></extra>", coloraxis="coloraxis"), row=1, col=col)
    fig.update_layout(title=f"run {run}", width=2400, height=900)
    return fig


PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><script src="/plotly.js"></script></head><body>
<button id="run">Run</button><div id="plot"></div><script>
let n = 0;
document.getElementById('run').onclick = async () => {
  const fig = await (await fetch('/figure?run=' + (++n))).json();
  Plotly.react('plot', fig.data, fig.layout);
};</script></body></html>"""


def serve_werkzeug(port: int) -> None:
    from plotly.offline import get_plotlyjs
    from werkzeug.serving import run_simple
    from werkzeug.wrappers import Request, Response

    plotly_js = get_plotlyjs()

    @Request.application
    def app(request):
        if request.path == "/":
            return Response(PAGE, mimetype="text/html")
        if request.path == "/plotly.js":
            return Response(plotly_js, mimetype="text/javascript")
        if request.path == "/figure":
            return Response(figure(int(request.args["run"])).to_json(), mimetype="application/json")
        return Response("not found", status=404)

    run_simple("127.0.0.1", port, app, threaded=True)


def serve_gradio(port: int) -> None:
    import gradio as gr

    runs = iter(range(1, 10**6))
    with gr.Blocks() as demo:
        button = gr.Button("Run")
        plot = gr.Plot()
        button.click(lambda: figure(next(runs)), None, plot)
    demo.launch(server_name="127.0.0.1", server_port=port)


# --- measurements ---------------------------------------------------------------------------
def closure(name: str) -> tuple[int, float]:
    """Distributions in ``name``'s dependency closure (itself included) and their size on disk, MB."""
    from packaging.requirements import Requirement

    seen, todo, size = set(), [name], 0
    while todo:
        dist_name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if dist_name in seen:
            continue
        try:
            dist = md.distribution(dist_name)
        except md.PackageNotFoundError:
            continue
        seen.add(dist_name)
        size += sum((f.size or 0) for f in dist.files or [])
        for req in dist.requires or []:
            requirement = Requirement(req)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return len(seen), size / 1e6


def import_seconds(module: str) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Recorder:
    """A pretend proxy on 127.0.0.1: notes the first line each client sends (``CONNECT host:443``), hangs up."""

    def __init__(self, lifetime: float = 600, max_connections: int = 500):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(1.0)
        self.port, self.seen, self.deadline, self.left = self.sock.getsockname()[1], [], time.monotonic() + lifetime, max_connections
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while time.monotonic() < self.deadline and self.left > 0:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.left -= 1
            with conn:
                conn.settimeout(2.0)
                try:
                    line = conn.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
                except OSError:
                    line = "(nothing sent)"
                self.seen.append(line)
        self.sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, timeout: float = 120) -> float:
    start, opener = time.perf_counter(), urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.perf_counter() - start < timeout:
        try:
            with opener.open(url, timeout=2) as response:
                response.read()
                return time.perf_counter() - start
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def measure(label: str, recorder: Recorder) -> dict:
    from chromium_cdp import Chromium, find_chromium

    kind = FRAMEWORKS[label]
    port = free_port()
    proxy = f"http://127.0.0.1:{recorder.port}"
    env = {**os.environ, "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy,
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    if label.endswith("(analytics off)"):
        env["GRADIO_ANALYTICS_ENABLED"] = "False"
    before = len(recorder.seen)
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_up(url)
        up = time.perf_counter() - start
        with Chromium(find_chromium(), width=1400, height=1000, loopback=True, timeout=60) as browser:
            browser.open(url)
            button = "Array.from(document.querySelectorAll('button')).find(b => b.textContent.trim() === 'Run')"
            browser.wait_for(f"!!{button}", timeout=60)
            clicks = []
            for run in range(1, CLICKS + 1):
                t0 = time.perf_counter()
                browser.evaluate(f"{button}.click()")
                drawn = browser.wait_for("Array.from(document.querySelectorAll('.gtitle'))"
                                         f".some(t => t.textContent === 'run {run}')", timeout=60)
                if not drawn:
                    raise TimeoutError(f"{label}: run {run} was not drawn")
                clicks.append(time.perf_counter() - t0)
            time.sleep(2.0)  # late requests (fonts, analytics) get a chance to show
            page_requests = sorted({re.sub(r"^(\w+://[^/]+).*", r"\1", u) for u in browser.request_urls()
                                    if not u.startswith((url, "data:", "blob:", "about:"))})
        time.sleep(2.0)
        return {"label": label, "closure": closure(kind), "import": import_seconds(kind), "up": up,
                "click": statistics.median(clicks[1:]), "page": page_requests,
                "server": sorted(set(recorder.seen[before:]))}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=["werkzeug", "gradio"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        {"werkzeug": serve_werkzeug, "gradio": serve_gradio}[args.serve](args.port)
        return
    recorder = Recorder()
    rows = [measure(label, recorder) for label in FRAMEWORKS]
    versions = {kind: md.version(kind) for kind in set(FRAMEWORKS.values())}
    print(f"versions: {json.dumps(versions)}; {CLICKS} clicks each, median of clicks 2..{CLICKS}")
    header = f"{'framework':<24} {'packages':>8} {'install MB':>10} {'import s':>8} {'page up s':>9} {'click->drawn s':>14}"
    print(header)
    print("-" * len(header))
    for r in rows:
        n, mb = r["closure"]
        print(f"{r['label']:<24} {n:>8} {mb:>10.1f} {r['import']:>8.2f} {r['up']:>9.2f} {r['click']:>14.2f}")
    for r in rows:
        print(f"{r['label']}: the page asked for {r['page'] or 'nothing else'}; "
              f"the server tried to reach {r['server'] or 'nothing'}")


if __name__ == "__main__":
    main()
