"""The explorer (``tl-tunedlens serve``) on a tiny model: its computations against independent ones,
its bounds and messages, the HTTP layer (werkzeug's test client and a real loopback socket), the CLI."""

from __future__ import annotations

import json
import re
import threading
import urllib.request

import pytest
import torch

from chromium_cdp import fetchable_urls
from conftest import make_tiny_model, random_tuned_lens
from tl_tunedlens import LensError, TunedLens
from tl_tunedlens.analysis import PredictionTrajectory
from tl_tunedlens.app import STAT_CHOICES, Explorer, Limits, Query
from tl_tunedlens.cli import main as cli_main
from tl_tunedlens.viz import report_html
from tl_tunedlens.viz.plots import display_token

werkzeug_test = pytest.importorskip("werkzeug.test", reason="the explorer's server needs the [app] extra")
from tl_tunedlens.app.server import CSP, ExplorerApp, Server, static_file  # noqa: E402
N_VOCAB = 37
TEXT = "w3 w14 w15 w9 w26 w5 w35 w8"


def word_tokenizer():
    """A real (fast) Hugging Face tokenizer over the words ``w1..w36``, built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, N_VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<unk>")


def tiny_model_with_tokenizer():
    model = make_tiny_model("RMS", n_layers=3, d_vocab=N_VOCAB, default_prepend_bos=False)
    model.set_tokenizer(word_tokenizer(), default_padding_side="right")
    return model


@pytest.fixture(scope="module")
def model():
    return tiny_model_with_tokenizer()


@pytest.fixture(scope="module")
def explorer(model):
    return Explorer(model, {"tuned A": random_tuned_lens(model, seed=3), "tuned B": random_tuned_lens(model, seed=4)},
                    limits=Limits(max_tokens=12, max_chars=200, max_top_k=8))


def lens_log_probs(lens, model, tokens):
    """[layer pos vocab] log-probs of every lens layer, through the cache route (independent of the app)."""
    logits, cache = model.run_with_cache(tokens, names_filter=lens.hook_names)
    return lens.log_probs_from_cache(cache)[:, 0]


def ids(text):
    return torch.tensor([[int(w[1:]) for w in text.split()]])


# --- the computations ---------------------------------------------------------------------------
def test_heatmap_shows_every_lens_and_the_models_own_last_row(explorer, model):
    out = explorer.respond(Query(text=TEXT, stat="kl", top_k=5))
    fig = out["figure"]
    assert [t.name for t in fig.data] == ["logit lens", "tuned A", "tuned B"]
    top1 = model(ids(TEXT))[0].argmax(-1).tolist()
    expected = [display_token(model.tokenizer.decode([i])) for i in top1]
    for trace in fig.data:
        assert len(trace.z) == model.cfg.n_layers + 1 and len(trace.z[0]) == 8
        assert list(trace.text[-1]) == expected  # last row: the model's own predictions
        assert all(v == 0.0 for v in trace.z[-1])  # KL(output || output)
    assert out["tokens"] == [f"w{i}" for i in ids(TEXT)[0].tolist()]
    assert out["position"] == 7 and out["diff_figure"] is None


@pytest.mark.parametrize("stat", ["kl", "entropy", "ce", "rank", "prob", "max_prob", "kl_step"])
def test_statistics_equal_the_trajectory_of_each_lens(explorer, model, stat):
    fig = explorer.respond(Query(text=TEXT, stat=stat))["figure"]
    for trace, lens in zip(fig.data, explorer.lenses.values()):
        traj = PredictionTrajectory.from_model(lens, model, ids(TEXT))
        values = traj.statistic(stat)[:, 0]
        if stat == "rank":
            values = values.log10()  # ranks are coloured on a log scale
        got = torch.tensor([[float("nan") if v is None else v for v in row] for row in trace.z])
        torch.testing.assert_close(got, values.float(), equal_nan=True, atol=1e-5, rtol=1e-5)


def test_chosen_token_probability_and_rank(explorer, model):
    token = 17
    prob = explorer.respond(Query(text=TEXT, stat="token_prob", token="w17"))["figure"]
    rank = explorer.respond(Query(text=TEXT, stat="token_rank", token="w17"))["figure"]
    assert "w17" in prob.layout.title.text
    for p_trace, r_trace, lens in zip(prob.data, rank.data, explorer.lenses.values()):
        lp = lens_log_probs(lens, model, ids(TEXT))  # [layer pos vocab]
        torch.testing.assert_close(torch.tensor(p_trace.z), lp[..., token].exp(), atol=1e-5, rtol=1e-5)
        expected_rank = (lp > lp[..., token:token + 1]).sum(-1) + 1
        assert torch.equal(torch.pow(10, torch.tensor(r_trace.z)).round().long(), expected_rank)
        assert "chosen token 'w17': p = " in p_trace.customdata[0][0] and "rank of the chosen token" in r_trace.customdata[0][0]


def test_logit_difference_per_layer(explorer, model):
    out = explorer.respond(Query(text=TEXT, diff_a="w4", diff_b="w9", position=3))
    fig = out["diff_figure"]
    assert [t.name for t in fig.data] == list(explorer.lenses)
    logits = model(ids(TEXT))[0, 3]
    for trace, lens in zip(fig.data, explorer.lenses.values()):
        lp = lens_log_probs(lens, model, ids(TEXT))[:, 3]
        torch.testing.assert_close(torch.tensor(trace.y, dtype=torch.float32), lp[:, 4] - lp[:, 9], atol=1e-4, rtol=0)
        assert trace.y[-1] == pytest.approx(float(logits[4] - logits[9]), abs=1e-4)  # the model's own logits
    assert "position 3 ('w9')" in fig.layout.title.text


def test_position_table(explorer, model):
    out = explorer.respond(Query(text=TEXT, position=-3, top_k=4))
    table = out["table"]
    assert table["position"] == 5 and table["token"] == "w5" and table["next"] == "w35"
    assert table["layers"][-1] == "output" and len(table["layers"]) == model.cfg.n_layers + 1
    for entry, lens in zip(table["lenses"], explorer.lenses.values()):
        lp = lens_log_probs(lens, model, ids(TEXT))[:, 5]
        values, indices = lp.topk(4, dim=-1)
        for r, row in enumerate(entry["rows"]):
            assert [tok for tok, _ in row["top"]] == [model.tokenizer.decode([i]) for i in indices[r].tolist()]
            assert [p for _, p in row["top"]] == pytest.approx(values[r].exp().tolist(), abs=1e-4)
        assert entry["rows"][-1]["kl"] == 0.0


def test_answers_are_cached_and_position_requests_skip_the_heatmap(explorer):
    text = "w1 w2 w3 w4"
    first = explorer.respond(Query(text=text, stat="kl"))
    second = explorer.respond(Query(text=text, stat="entropy"))
    assert not first["seconds"]["cached"] and second["seconds"]["cached"]
    moved = explorer.respond(Query(text=text, position=1, what="position"))
    assert moved["figure"] is None and moved["table"]["position"] == 1 and moved["seconds"]["cached"]


def test_report_is_the_page_show_writes(explorer, model):
    page = explorer.report(Query(text=TEXT, lens="tuned B", top_k=3))
    expected = report_html(model, explorer.lenses["tuned B"], TEXT, logit_lens=explorer.lenses["logit lens"],
                           top_k=3, title="Logit lens vs tuned B")
    stamp = re.compile(r"written [0-9T:-]+|tlv-[0-9a-f]+")  # the time and circuitsvis's random element ids
    assert stamp.sub("", page) == stamp.sub("", expected)
    assert fetchable_urls(page) == []
    with pytest.raises(LensError, match="no tuned lens named 'nope'"):
        explorer.report(Query(text=TEXT, lens="nope"))


# --- bounds and messages ------------------------------------------------------------------------
@pytest.mark.parametrize("data, message", [
    ([1, 2], "JSON object"),
    ({"stat": "kl"}, "has no text"),
    ({"text": "  "}, "text is empty"),
    ({"text": "w1 " * 100}, "300 characters; the limit is 200"),
    ({"text": "w1", "stat": "nope"}, "unknown statistic 'nope'"),
    ({"text": "w1", "top_k": 9}, "top-k must be between 1 and 8"),
    ({"text": "w1", "top_k": "many"}, "top_k must be an integer"),
    ({"text": "w1", "top_k": True}, "top_k must be an integer"),
    ({"text": 5}, "text must be a string"),
    ({"text": "w1", "token": "w" * 51}, "token is longer than 50 characters"),
    ({"text": "w1", "what": "everything"}, "what must be 'all' or 'position'"),
    ({"text": "w1", "colour": "red"}, "unknown request field"),
])
def test_bad_queries_are_refused_with_one_line(data, message):
    with pytest.raises(LensError, match=re.escape(message)):
        Query.from_json(data, Limits(max_chars=200, max_top_k=8))


@pytest.mark.parametrize("query, message", [
    (Query(text=" ".join(["w1"] * 13)), "13 tokens long; the limit is 12"),
    (Query(text=TEXT, position=8), "position 8 is out of range: the text has 8 tokens"),
    (Query(text=TEXT, position=-9), "position -9 is out of range"),
    (Query(text=TEXT, token="w1 w2"), "chosen token 'w1 w2' is 2 tokens ('w1' + 'w2')"),
    (Query(text=TEXT, diff_a="w1 w2", diff_b="w3"), "token A 'w1 w2' is 2 tokens"),
    (Query(text=TEXT, stat="token_prob"), "type a token under 'chosen token'"),
])
def test_bad_input_for_the_model_is_refused_before_work(explorer, query, message):
    runs = len(explorer.cache)
    with pytest.raises(LensError, match=re.escape(message)):
        explorer.respond(query)
    assert len(explorer.cache) == runs


def test_one_diff_token_gives_a_note(explorer):
    out = explorer.respond(Query(text=TEXT, diff_a="w4"))
    assert out["diff_figure"] is None and out["notes"] == ["type both tokens A and B to see their logit difference"]


def test_explorer_checks_its_lenses(model):
    other = make_tiny_model("RMS", n_layers=3, d_vocab=N_VOCAB, seed=9)
    with pytest.raises(LensError):
        Explorer(model, {"wrong": TunedLens.from_model(other)})
    with pytest.raises(LensError, match="logit lens"):
        Explorer(model, {"logit lens": TunedLens.from_model(model)})
    bare = make_tiny_model("RMS", n_layers=2)
    with pytest.raises(LensError, match="tokenizer"):
        Explorer(bare)
    with pytest.raises(LensError, match="max_tokens must be at least 1"):
        Limits(max_tokens=0)


# --- HTTP ---------------------------------------------------------------------------------------
@pytest.fixture
def client(explorer):
    return werkzeug_test.Client(ExplorerApp(explorer, log=lambda text: None))


def test_page_and_assets_name_no_other_address(client):
    for path in ("/", "/static/explorer.js", "/static/figures.js", "/static/explorer.css", "/static/plotly.min.js"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["Content-Security-Policy"] == CSP
        assert fetchable_urls(response.get_data(as_text=True)) == [], path
    assert "cdn.jsdelivr" not in static_file("plotly.min.js").decode()
    for name in ("explorer.js", "figures.js"):
        js = client.get(f"/static/{name}").get_data(as_text=True)
        assert not re.search(r"https?://", js)  # the page talks to its own origin only
    assert "connect-src 'self'" in CSP and "default-src 'none'" in CSP
    assert client.get("/static/../explorer.py").status_code == 404
    assert client.get("/static/nothing.js").status_code == 404


def test_api_round_trip(client, explorer):
    settings = client.get("/api/settings").json
    assert settings["lenses"] == ["logit lens", "tuned A", "tuned B"] and settings["stats"] == STAT_CHOICES
    assert settings["limits"]["max_tokens"] == 12
    response = client.post("/api/analyze", json={"text": TEXT, "stat": "entropy", "top_k": 3})
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    data = response.json
    assert [t["name"] for t in data["figure"]["data"]] == ["logit lens", "tuned A", "tuned B"]
    assert data["figure"]["data"][0]["z"][0][0] is not None


@pytest.mark.parametrize("kwargs, status, message", [
    ({"json": {"text": ""}}, 400, "the text is empty"),
    ({"data": "text=w1", "content_type": "application/x-www-form-urlencoded"}, 400, "send the query as JSON"),
    ({"data": "{not json", "content_type": "application/json"}, 400, "not valid JSON"),
    ({"json": {"text": "w1 " * 30000}}, 413, "413 Request Entity Too Large"),
])
def test_api_errors_are_json_messages(client, kwargs, status, message):
    response = client.post("/api/analyze", **kwargs)
    assert response.status_code == status
    assert message in response.json["error"]


def test_api_bug_is_a_500_message_not_a_crash(explorer, monkeypatch):
    logged = []
    app = ExplorerApp(explorer, log=logged.append)
    monkeypatch.setattr(explorer, "respond", lambda query: 1 / 0)
    response = werkzeug_test.Client(app).post("/api/analyze", json={"text": "w1"})
    assert response.status_code == 500 and "ZeroDivisionError" in response.json["error"]
    assert "Traceback" in logged[0]


def test_only_loopback_host_names_are_answered(client):
    assert client.get("/", headers={"Host": "localhost:8765"}).status_code == 200
    assert client.get("/", headers={"Host": "[::1]:8765"}).status_code == 200
    refused = client.get("/api/settings", headers={"Host": "evil.example:8765"})
    assert refused.status_code == 403 and "refused: open the explorer at http://127.0.0.1:" in refused.json["error"]
    for odd in ("127.0.0.1:notaport", "[bad"):  # malformed: refused with a message, never a crash
        assert "refused" in client.get("/api/settings", headers={"Host": odd}).json["error"]
    assert client.get("/nowhere").status_code == 404
    assert client.get("/api/analyze").status_code == 405


def test_report_download(client):
    response = client.post("/api/report", json={"text": TEXT, "lens": "tuned A"})
    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == 'attachment; filename="tl_tunedlens-report.html"'
    assert response.get_data(as_text=True).startswith("<!DOCTYPE html>")
    assert client.post("/api/report", json={"text": "w1"}).json["error"] == "the page needs a text of at least 2 tokens"


def _get(url):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    with opener.open(url, timeout=10) as response:
        return json.load(response)


def test_server_binds_loopback_and_stops(explorer):
    with Server(explorer, port=0, quiet=True) as server:
        assert server.url.startswith("http://127.0.0.1:") and server.httpd.server_address[0] == "127.0.0.1"
        assert _get(server.url + "api/settings")["model"] == explorer.model_name
        with pytest.raises(LensError, match="cannot listen on 127.0.0.1"):
            Server.check_address("127.0.0.1", server.port)
    assert server.thread is None


# --- the command line -----------------------------------------------------------------------------
def test_cli_serve_end_to_end(tmp_path, monkeypatch, capsys):
    import tl_tunedlens.cli.serve as cli_serve

    model = tiny_model_with_tokenizer()
    random_tuned_lens(model).save(tmp_path / "lens-a")
    monkeypatch.setattr(cli_serve, "load_model_from_args", lambda args: model)
    answers = []

    def serve_once(self):  # stands in for Ctrl+C after one real request
        thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        thread.start()
        try:
            answers.append(_get(self.url + "api/settings"))
        finally:
            self.httpd.shutdown()
            thread.join(timeout=10)
        raise KeyboardInterrupt

    monkeypatch.setattr(Server, "serve_forever", serve_once)
    assert cli_main(["serve", "--lens", str(tmp_path / "lens-a"), "--port", "0", "--quiet"]) == 0
    assert answers[0]["lenses"] == ["logit lens", "lens-a"]
    out = capsys.readouterr().out
    assert "tl-tunedlens explorer: http://127.0.0.1:" in out and "stopped" in out


@pytest.mark.parametrize("argv, message", [
    (["--lens", "/nonexistent/lens"], "lens folder /nonexistent/lens does not exist"),
    (["--port", "70000"], "--port: 70000: use at most 65535"),
    (["--max-tokens", "0"], "--max-tokens: 0: use at least 1"),
    (["--threads", "0"], "--threads: 0: use at least 1"),
])
def test_cli_serve_errors_before_loading_the_model(argv, message, monkeypatch, capsys):
    import tl_tunedlens.cli.serve as cli_serve

    monkeypatch.setattr(cli_serve, "load_model_from_args", lambda args: pytest.fail("the model was loaded"))
    assert cli_main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_lens_names():
    from tl_tunedlens.cli.serve import lens_names

    assert lens_names(["a/lens", "b/other"]) == ["lens", "other"]
    assert lens_names(["a/lens", "b/lens"]) == ["a/lens", "b/lens"]


def test_every_offered_statistic_is_drawn(explorer):
    for stat in STAT_CHOICES:
        fig = explorer.respond(Query(text=TEXT, stat=stat, token="w2"))["figure"]
        assert len(fig.data) == 3 and len(fig.data[0].z) >= explorer.model.cfg.n_layers


def test_readme_shows_the_explorer():
    from pathlib import Path

    from tl_tunedlens.cli import build_parser

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    section = readme.split("## The explorer: type text, see every layer\n", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"```bash\n(tl-tunedlens serve[^#\n]*)", section).group(1).split()
    args = build_parser().parse_args(command[1:])
    assert args.command == "serve" and args.host == "127.0.0.1"
    image = root / re.search(r"!\[[^]]*\]\(([^)]+)\)", section).group(1)
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size < 1_000_000
