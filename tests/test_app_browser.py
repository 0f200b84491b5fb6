"""The explorer end to end in a real browser: ``tl-tunedlens serve``'s server on 127.0.0.1 with the real
SmolLM2 and headless Chromium (network cut off except loopback). Type a prompt, submit, wait for the
figure; the last layer's top-1 tokens shown are the model's own predictions; no console errors; no
request leaves the server; a second prompt updates the figure; the table tab and the download work.
Progressive drawing: the model's output row is drawn first, then the layers; a prompt typed while another
runs cancels it (on the server too) and the page never shows the older prompt again."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from chromium_cdp import Chromium, fetchable_urls, find_chromium, wait_until
from test_browser import _require_browser
from tl_tunedlens import TunedLens
from tl_tunedlens.analysis.cells import Cancelled
from tl_tunedlens.app import Explorer
from tl_tunedlens.viz.plots import display_token

pytest.importorskip("werkzeug", reason="the explorer's server needs the [app] extra")
from tl_tunedlens.app.server import Server  # noqa: E402

pytestmark = pytest.mark.integration
PROMPTS = ["The capital of France is Paris, and the capital of Germany is",
           "To be, or not to be, that is the question"]
SLOW, FAST = "Once upon a time there was a little", "The quick brown fox jumps over the lazy"
SERVER_LIFETIME_S = 600  # the test's server stops by itself after this, whatever happens


@pytest.fixture(scope="module")
def server(smollm2):
    explorer = Explorer(smollm2, {"tuned lens": TunedLens.from_model(smollm2)})
    server = Server(explorer, "127.0.0.1", 0, quiet=True).start()
    watchdog = threading.Timer(SERVER_LIFETIME_S, server.httpd.shutdown)
    watchdog.daemon = True
    watchdog.start()
    yield server
    watchdog.cancel()
    server.stop()


def model_top1(model, text: str) -> list[str]:
    with torch.no_grad():
        ids = model(model.to_tokens(text))[0].argmax(-1).tolist()
    return [display_token(model.tokenizer.decode([i])) for i in ids]


def type_and_run(browser: Chromium, text: str) -> None:
    """Replace the prompt by typing it (real key input) and press Ctrl+Enter."""
    browser.evaluate("(() => { const t = document.getElementById('text'); t.focus(); t.select(); })()")
    browser.send("Input.insertText", text=text)
    for kind in ("rawKeyDown", "keyUp"):
        browser.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13,
                     modifiers=2)  # Ctrl


def wait_for_figure(browser: Chromium, text: str) -> list[list[str]]:
    """The last row's cell labels of each lens once the heatmap shows all of ``text`` (bounded wait)."""
    drawn = browser.wait_for(
        f"document.getElementById('heatmap').dataset.complete === {json.dumps(text)}"
        " && document.querySelectorAll('#heatmap .heatmaplayer text').length", timeout=180)
    assert drawn, browser.evaluate("document.getElementById('message').textContent")
    return browser.evaluate("document.getElementById('heatmap').data.map(t => t.text[t.text.length - 1])")


def test_explorer_in_chromium(server, smollm2, tmp_path):
    _require_browser()
    n_rows = smollm2.cfg.n_layers + 1
    with Chromium(find_chromium(), width=1500, height=1100, loopback=True, timeout=60) as browser:
        browser.open(server.url)
        assert browser.wait_for("document.body.dataset.ready === '1'", timeout=30)
        assert "lenses: logit lens, tuned lens" in browser.evaluate("document.getElementById('model').textContent")

        type_and_run(browser, PROMPTS[0])
        last_rows = wait_for_figure(browser, PROMPTS[0])
        expected = model_top1(smollm2, PROMPTS[0])
        assert last_rows == [expected, expected]  # logit lens and tuned lens: the model's own output
        n_pos = len(expected)
        cells = browser.evaluate("document.querySelectorAll('#heatmap .heatmaplayer text').length")
        assert cells == 2 * n_rows * n_pos
        shown = browser.evaluate("Array.from(document.querySelectorAll('#heatmap .heatmaplayer text'))"
                                 ".map(t => t.textContent)")
        assert set(e.replace("&amp;", "&") for e in expected) <= set(shown)

        # the logit difference of two typed tokens, and the table of one position
        browser.evaluate("(() => { document.getElementById('diff-a').value = ' Berlin';"
                         " const b = document.getElementById('diff-b'); b.value = ' Paris';"
                         " b.dispatchEvent(new Event('change')); })()")
        assert browser.wait_for("!document.getElementById('diff').hidden"
                                " && document.getElementById('diff').data?.length === 2"
                                f" && document.getElementById('heatmap').dataset.complete === {json.dumps(PROMPTS[0])}",
                                timeout=180)
        browser.evaluate("document.querySelector('.tab[data-tab=position]').click()")
        rows = browser.evaluate("Array.from(document.querySelectorAll('#layers tr')).slice(1)"
                                ".map(r => r.querySelector('.tk').firstChild.textContent)")
        assert len(rows) == n_rows and rows[-1] == expected[-1]
        browser.screenshot(tmp_path / "table.png")
        browser.evaluate("document.querySelector('.tab[data-tab=trajectories]').click()")

        # a second prompt updates the figure
        type_and_run(browser, PROMPTS[1])
        expected2 = model_top1(smollm2, PROMPTS[1])
        assert wait_for_figure(browser, PROMPTS[1]) == [expected2, expected2]
        assert browser.evaluate("document.getElementById('heatmap').data[0].x.length") == len(expected2)

        # "download this page": the offline report arrives as a file
        browser.send("Page.setDownloadBehavior", behavior="allow", downloadPath=str(tmp_path))
        browser.evaluate("document.getElementById('download').click()")
        page = tmp_path / "tl_tunedlens-report.html"   # Chromium renames a download to its name once complete
        assert wait_until(page.is_file, timeout=180), browser.evaluate("document.getElementById('message').textContent")
        html = page.read_text(encoding="utf-8")
        assert html.startswith("<!DOCTYPE html>") and "To be, or not to be" in html and fetchable_urls(html) == []

        assert browser.errors() == []
        origin = server.url.rstrip("/")
        leaving = [u for u in browser.request_urls() if not u.startswith((origin + "/", "data:", "blob:", "about:"))]
        assert leaving == []


def test_progressive_drawing_and_cancel_in_chromium(server, smollm2):
    """The first prompt is held after its output row (a gate in the server), so the second one certainly
    arrives while it runs; the first is then cancelled by the server and never drawn again."""
    _require_browser()
    app = server.httpd.app
    explorer, answer = app.explorer, app.progressive.answer
    gate, asked, outcome = threading.Event(), [], []
    compute = explorer.compute

    def gated(tokens, *args, **kwargs):
        held = explorer.tokenize(SLOW)[0].tolist() == tokens[0].tolist()
        try:
            for i, item in enumerate(compute(tokens, *args, **kwargs)):
                yield item
                if held and i == 0:
                    assert gate.wait(120)
        except Cancelled:
            outcome.append("cancelled")
            raise

    def recorded(data):
        asked.append(data.get("text"))
        return answer(data)

    explorer.compute, app.progressive.answer = gated, recorded
    try:
        with Chromium(find_chromium(), width=1500, height=1100, loopback=True, timeout=60) as browser:
            browser.open(server.url)
            assert browser.wait_for("document.body.dataset.ready === '1'", timeout=30)
            type_and_run(browser, SLOW)
            first = browser.wait_for(f"window.explorerDraws.find(d => d.text === {json.dumps(SLOW)} && d.rows > 0)",
                                     timeout=180)
            assert first == {"text": SLOW, "rows": 2, "complete": False}  # the output row of both lenses, alone
            last = browser.evaluate("Array.from(document.getElementById('heatmap').data[0].text).map(r => r[0])")
            assert last[-1] != "" and all(t == "" for t in last[:-1])  # drawn: the output row; the layers wait
            type_and_run(browser, FAST)
            assert wait_until(lambda: FAST in asked, timeout=60)  # the server has the newer request
            gate.set()
            expected = model_top1(smollm2, FAST)
            assert wait_for_figure(browser, FAST) == [expected, expected]
            draws = browser.evaluate("window.explorerDraws")
            fast_from = next(i for i, d in enumerate(draws) if d["text"] == FAST)
            assert all(d["text"] == FAST for d in draws[fast_from:])  # never the older prompt again
            assert not any(d["text"] == SLOW and d["complete"] for d in draws)
            rows = [d["rows"] for d in draws[fast_from:]]
            assert rows[0] == 0 and rows[1] == 2 and rows[-1] == 2 * (smollm2.cfg.n_layers + 1)
            assert rows == sorted(rows) and len(set(rows)) > 3  # filled in block by block
            assert browser.errors() == []
        assert outcome == ["cancelled"]
    finally:
        gate.set()
        explorer.compute, app.progressive.answer = compute, answer
