"""Figures, circuitsvis views and the report: content, offline HTML, PNG export, the CLI."""

from __future__ import annotations

import io
import json
import math

import plotly.graph_objects as go
import pytest
import torch

from chromium_cdp import fetchable_urls
from conftest import make_tiny_model
from tl_tunedlens import LensError, LogitLens, TunedLens
from tl_tunedlens.cli import main as cli_main
from tl_tunedlens.analysis.trajectory import PredictionTrajectory, compare_lenses
from tl_tunedlens.viz import (
    CircuitsView, colored_tokens_view, compare_heatmaps, comparison_heatmap, lens_view, metric_curves, save_html,
    top_k_view, trajectory_heatmap, write_html, write_metric_curves, write_png, write_report,
)


class LetterTokenizer:
    """A stand-in tokenizer for tiny models: id -> a short word (with odd characters on purpose)."""

    def decode(self, ids):
        return "".join(" <b>" if i == 3 else "\n" if i == 4 else f" w{i}" for i in ids)

    def encode(self, text, add_special_tokens=False):
        return [int(w[1:]) for w in text.split()]


@pytest.fixture(scope="module")
def tiny():
    model = make_tiny_model("RMS", n_layers=3)
    model.tokenizer = None
    lens = TunedLens.from_model(model)
    with torch.no_grad():
        for t in lens.translators:
            t.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    tokens = torch.tensor([[5, 3, 4, 9, 11, 2, 7, 30]])
    traj = PredictionTrajectory.from_model(lens, model, tokens, top_k=6, tokenizer=LetterTokenizer())
    logit = PredictionTrajectory.from_model(LogitLens.from_model(model), model, tokens, top_k=6, tokenizer=LetterTokenizer())
    return model, lens, tokens, traj, logit


def metrics_fixture(tuned: bool = True) -> dict:
    layers = []
    for i in range(4):
        entry = {"layer": i, "hook": f"blocks.{i}.hook_resid_pre",
                 "logit": {"kl": 4.0 - i, "ce": 6.0 - i, "entropy": 3.0, "top1": 0.1 * i,
                           "bits_per_byte": {"kl": (4.0 - i) / 3, "ce": (6.0 - i) / 3, "entropy": 1.0}}}
        if tuned:
            entry["tuned"] = {"kl": (4.0 - i) / 2, "ce": 5.0 - i / 2, "entropy": 3.0, "top1": 0.2 * i,
                              "bits_per_byte": {"kl": (4.0 - i) / 6, "ce": (5.0 - i / 2) / 3, "entropy": 1.0}}
        layers.append(entry)
    return {"model": "tiny", "tokens": 1000, "bytes_per_token": 4.2,
            "baseline": {"ce": 3.0, "entropy": 2.5, "bits_per_byte": {"ce": 1.0, "entropy": 0.8}}, "layers": layers}


# --- plotly -----------------------------------------------------------------------------------
def test_heatmap_cells_and_hover(tiny):
    *_, traj, _ = tiny
    fig = trajectory_heatmap(traj, "kl", top_k=3)
    (hm,) = [t for t in fig.data if isinstance(t, go.Heatmap)]
    z = [list(r) for r in hm.z]
    assert len(z) == traj.n_rows and len(z[0]) == traj.n_pos
    assert z[2][1] == pytest.approx(traj.kl()[2, 0, 1].item())
    top1 = traj.decode(traj.top_k_indices[1, 0, 5, 0])
    assert hm.text[1][5] == top1.replace("\n", "\\n").replace("<", "&lt;").replace(">", "&gt;")
    hover = hm.customdata[1][5]
    assert "top-3" in hover and hover.count("<br>") >= 5 and "<b>" not in hover.split("top-3")[1]  # tokens escaped
    assert list(fig.layout.yaxis.ticktext)[-1] == "output"
    rank = trajectory_heatmap(traj, "rank").data[0]
    assert rank.z[0][0] == pytest.approx(math.log10(traj.rank()[0, 0, 0].item()))  # log colour scale
    assert rank.z[0][-1] is None  # no next token at the last position
    delta = trajectory_heatmap(traj, "delta_entropy").data[0]
    assert len(delta.z) == traj.n_rows - 1 and delta.zmid == 0
    with pytest.raises(LensError, match="unknown statistic"):
        trajectory_heatmap(traj, "bogus")


def test_compare_heatmaps_share_colour_scale(tiny):
    *_, traj, logit = tiny
    fig = compare_heatmaps([logit, traj], "entropy")
    assert [t.coloraxis for t in fig.data] == ["coloraxis", "coloraxis"]
    assert [a.text for a in fig.layout.annotations] == ["logit lens", "tuned lens"]
    assert fig.layout.coloraxis.cmax >= max(max(v for v in row if v is not None) for row in fig.data[0].z[1:])
    comp = compare_lenses(LogitLens.from_model(tiny[0]), tiny[1], tiny[0], tiny[2])
    assert len(comparison_heatmap(comp, "js").data[0].z) == traj.n_rows


def test_metric_curves(tmp_path):
    fig = metric_curves(metrics_fixture())
    names = [(t.name, t.xaxis) for t in fig.data]
    assert ("logit lens", "x") in names and ("tuned lens", "x2") in names and ("model output", "x2") in names
    tuned_kl = [t for t in fig.data if t.name == "tuned lens" and t.xaxis == "x"][0]
    assert list(tuned_kl.y) == [2.0, 1.5, 1.0, 0.5] and list(tuned_kl.x) == [0, 1, 2, 3]
    bpb = metric_curves(metrics_fixture(), unit="bits_per_byte")
    assert list([t for t in bpb.data if t.name == "logit lens"][0].y) == pytest.approx([4 / 3, 1, 2 / 3, 1 / 3])
    assert {t.name for t in metric_curves(metrics_fixture(tuned=False)).data} == {"logit lens", "model output"}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics_fixture()))
    write_metric_curves(path, tmp_path / "curves.html")
    assert not fetchable_urls((tmp_path / "curves.html").read_text())
    with pytest.raises(LensError, match="no metrics file"):
        metric_curves(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(LensError, match="not valid JSON"):
        metric_curves(tmp_path / "bad.json")
    with pytest.raises(LensError, match='"layers"'):
        metric_curves({"model": "x"})


def test_offline_html_and_png(tiny, tmp_path):
    *_, traj, logit = tiny
    fig = compare_heatmaps([logit, traj], "kl")
    page = write_html(fig, tmp_path / "fig.html").read_text()
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.js inlined
    assert fetchable_urls(page) == []
    png = write_png(fig, tmp_path / "fig.png")
    from PIL import Image, ImageStat

    image = Image.open(io.BytesIO(png.read_bytes())).convert("L")
    assert image.size[0] > 600 and max(ImageStat.Stat(image).stddev) > 20  # not blank
    curves = write_metric_curves(metrics_fixture(), None, tmp_path / "curves.png")
    assert isinstance(curves, go.Figure) and (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- circuitsvis ------------------------------------------------------------------------------
def test_circuitsvis_views(tiny, tmp_path):
    *_, traj, _ = tiny
    view = colored_tokens_view(traj, "entropy")
    (name, props), = view.components
    assert name == "ColoredTokensMulti" and props["tokens"] == traj.input_strings(0)
    assert len(props["values"]) == traj.n_pos and len(props["values"][0]) == traj.n_rows
    assert props["values"][3][2] == pytest.approx(traj.entropy()[2, 0, 3].item())
    top = top_k_view(traj, layer=1)
    (name, props), = top.components
    assert name == "TokenLogProbs" and len(props["topKLogProbs"]) == traj.n_pos - 1
    assert props["correctTokenRank"] == (traj.target_ranks[1, 0, :-1] - 1).tolist()
    assert props["topKTokens"][0][0] == traj.decode(traj.top_k_indices[1, 0, 0, 0])
    both = lens_view(traj, "kl")
    assert len(both.components) == 1 + traj.n_rows and isinstance(both, CircuitsView)
    html = both._repr_html_()
    assert html == both.local_src and "CircuitsVis.render(" in html and "unpkg" not in html
    assert "</b>" not in html.split("CircuitsVis.render(", 1)[1]  # props escaped inside <script>
    page = both.save(tmp_path / "view.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and fetchable_urls(page) == []
    import circuitsvis.tokens

    plain = save_html(circuitsvis.tokens.colored_tokens_multi(["a", "b"], torch.rand(2, 3)), tmp_path / "plain.html")
    assert "CircuitsVis" in plain.read_text() and fetchable_urls(plain.read_text()) == []
    with pytest.raises(LensError, match="out of range"):
        top_k_view(traj, layer=traj.n_rows)


# --- the report and the CLI -------------------------------------------------------------------
def test_report_tiny(tiny, tmp_path):
    model, lens, tokens, *_ = tiny
    path = write_report(tmp_path / "report.html", model, lens, tokens, stats=("kl", "rank"))
    page = path.read_text()
    assert page.count('id="heatmap-') == 2 and page.count("CircuitsVis.render(") == 2 * (1 + lens.n_layers + 1)
    assert page.count("var CircuitsVis") == 1 and fetchable_urls(page) == []
    with pytest.raises(LensError, match="unknown statistic"):
        write_report(tmp_path / "r2.html", model, lens, tokens, stats=("nope",))
    assert not (tmp_path / "r2.html").exists()


def test_cli_show_bad_stats(capsys):
    assert cli_main(["show", "--stats", ",", "--out", "/nonexistent/x.html"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--stats" in err


@pytest.mark.integration
def test_cli_show_smollm2(smollm2, tmp_path, monkeypatch, capsys):
    import tl_tunedlens.cli.show as show

    monkeypatch.setattr(show, "load_model_from_args", lambda args, **kwargs: smollm2)
    out = tmp_path / "report.html"
    lens_dir = tmp_path / "lens"
    TunedLens.from_model(smollm2).save(lens_dir)
    args = ["show", "--lens", str(lens_dir), "--text", "To be, or not", "--out", str(out), "--stats", "kl,prob"]
    assert cli_main(args) == 0
    assert "wrote" in capsys.readouterr().out
    page = out.read_text()
    assert "SmolLM2" in page and "heatmap-prob" in page and "heatmap-kl" in page and fetchable_urls(page) == []
