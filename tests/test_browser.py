"""A real browser: headless Chromium (Debian package ``chromium``) opens the generated report from
a file with the network cut off; the heatmaps and circuitsvis views render, no console errors, no
request leaves the file, and a screenshot is not blank."""

from __future__ import annotations

import io
import os

import pytest
import torch

from chromium_cdp import Chromium, find_chromium
from conftest import make_tiny_model
from tl_tunedlens import TunedLens
from tl_tunedlens.viz import write_report

CHROMIUM = find_chromium()


def _require_browser() -> None:
    missing = []
    if CHROMIUM is None:
        missing.append("chromium (apt-get install -y chromium)")
    try:
        import websocket  # noqa: F401
        import PIL  # noqa: F401
    except ImportError as err:
        missing.append(f"{err.name} (pip install -e '.[dev]')")
    if missing:
        if os.environ.get("CI"):
            pytest.fail("the browser test needs " + ", ".join(missing))
        pytest.skip("needs " + ", ".join(missing))


class WordTokenizer:
    padding_side = "right"

    def decode(self, ids):
        return "".join(f" w{i}" for i in ids)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    model = make_tiny_model("RMS", n_layers=4, d_vocab=50)
    model.tokenizer = WordTokenizer()
    lens = TunedLens.from_model(model)
    with torch.no_grad():
        for t in lens.translators:
            t.weight.normal_(0, 0.2, generator=torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("browser") / "report.html"
    write_report(path, model, lens, torch.tensor([3, 14, 15, 9, 26, 5, 35, 8, 9, 7]), stats=("kl", "entropy"))
    return path


def test_report_renders_offline_in_chromium(report, tmp_path):
    _require_browser()
    from PIL import Image, ImageStat

    with Chromium(CHROMIUM, width=1400, height=1000) as browser:
        browser.open(report)
        n_heatmaps = browser.wait_for("document.querySelectorAll('.js-plotly-plot .heatmaplayer image').length >= 4"
                                      " && document.querySelectorAll('.js-plotly-plot .heatmaplayer text').length")
        assert n_heatmaps and n_heatmaps >= 2 * 10 * 5  # cell labels of 2 figures x 2 lenses
        assert browser.evaluate("document.querySelectorAll('.js-plotly-plot svg.main-svg').length") >= 2
        # every circuitsvis component rendered something (React fills its div)
        rendered = browser.wait_for(
            "(() => { const ds = Array.from(document.querySelectorAll('.tl-circuitsvis div[id^=\"tlv-\"]'));"
            " return ds.length > 0 && ds.every(d => d.children.length > 0) && ds.length; })()")
        assert rendered == 2 * (1 + 5)  # two lens views: coloured tokens + 5 layers' top-k
        assert "w14" in browser.evaluate("document.querySelector('.tl-circuitsvis').innerText")
        # the layer selector switches which top-k view is shown
        visible = ("Array.from(document.querySelectorAll('.tl-circuitsvis')[0].querySelectorAll('.tl-layer'))"
                   ".filter(d => d.style.display !== 'none').map(d => d.dataset.layer).join(',')")
        assert browser.evaluate(visible) == "4"
        browser.evaluate("(() => { const s = document.querySelector('.tl-circuitsvis select'); s.value = '1';"
                         " s.dispatchEvent(new Event('change')); })()")
        assert browser.evaluate(visible) == "1"
        browser.next_frames()
        png = browser.screenshot(tmp_path / "report.png")
        assert browser.errors() == []
        fetched = [u for u in browser.request_urls() if not u.startswith(("file:", "data:", "blob:", "about:"))]
        assert fetched == []
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size == (1400, 1000)
    stat = ImageStat.Stat(image)
    assert max(stat.stddev) > 25  # not blank
    assert len(set(image.resize((140, 100)).getdata())) > 50  # many colours: the heatmap is drawn
