"""The documentation site builds offline with warnings as errors (every tutorial cell executed,
every public name documented, every cross-reference resolved), and its pages render in headless
Chromium with the network cut off: MathJax, plotly and circuitsvis draw, nothing is fetched."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from chromium_cdp import Chromium, find_chromium
from test_browser import _require_browser

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory, worker_id):
    """The site, built once per test session: under pytest-xdist the workers share one build (the first to take
    the lock builds, the others wait on the lock and read its result), so the two tests below never build twice."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    shared = shared if worker_id == "master" else shared.parent   # the session's folder, common to its workers
    out, done, failure = shared / "docs-site" / "html", shared / "docs-site.done", shared / "docs-site.failed"
    with FileLock(str(shared / "docs-site.lock")):
        if not done.exists() and not failure.exists():   # (a build killed half-way left neither: build again)
            cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-E", "-q", "-b", "html",
                   str(ROOT / "docs"), str(out)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                failure.write_text(proc.stderr[-4000:] or f"sphinx exited {proc.returncode}")
            else:
                done.touch()
    assert not failure.exists(), failure.read_text()
    return out


def test_every_page_is_built(site):
    pages = {p.relative_to(site).as_posix() for p in site.rglob("*.html")}
    for page in ("index.html", "api.html", "tutorials/training_and_evaluating_lenses.html",
                 "tutorials/loading_pretrained_lenses.html", "tutorials/lenses_in_transformerlens.html",
                 "tutorials/transformerbridge.html", "tutorials/lens_families.html", "tutorials/explorer.html",
                 "guide.html",
                 "tutorials/safety.html", "tutorials/experiments.html",
                 "tutorials/lenses_and_saes.html", "tutorials/scaling_up.html",
                 "_autosummary/tl_tunedlens.lens.TunedLens.html"):
        assert page in pages
    for page in sorted((site / "tutorials").glob("*.html")):   # executed cells print no warnings
        text = re.sub(r"<script.*?</script>", "", page.read_text(), flags=re.S)   # not plotly.js's own strings
        warned = re.findall(r"\b[A-Z]\w*Warning: [^<]{0,80}", text)
        assert not warned, (page.name, warned[:3])
    tutorial = (site / "tutorials" / "training_and_evaluating_lenses.html").read_text()
    assert "tuned KL" in tutorial and "lens saved to" in tutorial  # executed cells left their output
    assert "mathjax/tex-chtml.js" in (site / "index.html").read_text()


def _check_offline(browser: Chromium) -> None:
    assert browser.errors() == []
    fetched = [u for u in browser.request_urls() if not u.startswith(("file:", "data:", "blob:", "about:"))]
    assert fetched == []


def test_pages_render_offline_in_chromium(site):
    _require_browser()
    with Chromium(find_chromium(), width=1300, height=1000) as browser:
        browser.open(site / "index.html")
        assert browser.wait_for("document.querySelectorAll('mjx-container').length") >= 4   # the math rendered
        assert browser.wait_for("document.querySelector('img[src*=\"demo_metric_curves\"]').naturalWidth") > 100
        _check_offline(browser)
    with Chromium(find_chromium(), width=1300, height=1000) as browser:
        browser.open(site / "tutorials" / "lenses_in_transformerlens.html")
        assert browser.wait_for("document.querySelectorAll('.js-plotly-plot .heatmaplayer image').length") >= 2
        assert browser.wait_for("(() => { const d = document.querySelector('.tl-circuitsvis div[id^=\"tlv-\"]');"
                                " return d && d.children.length; })()")
        _check_offline(browser)
