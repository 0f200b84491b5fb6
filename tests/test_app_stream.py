"""The explorer's progressive answers (``POST /api/stream``, :mod:`tl_tunedlens.app.progressive`) on a tiny
model: rows arrive output row first, equal the Python path's statistics, and a newer request from the same
page cancels the older one; bad requests are 400s before any line."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from test_app import TEXT, explorer, model  # noqa: F401  (fixtures)
from tl_tunedlens.app import Query
from tl_tunedlens.app.progressive import Pages

werkzeug_test = pytest.importorskip("werkzeug.test", reason="the explorer's server needs the [app] extra")
from tl_tunedlens.app.server import CSP, ExplorerApp  # noqa: E402


@pytest.fixture
def client(explorer):  # noqa: F811
    return werkzeug_test.Client(ExplorerApp(explorer, log=lambda text: None))


def messages(response) -> list[dict]:
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines()]


def test_stream_sends_the_output_row_first_then_every_layer(client, explorer, model):  # noqa: F811
    explorer.cache.clear()
    response = client.post("/api/stream", json={"text": TEXT, "page": "p1", "seq": 1, "top_k": 3, "token": "w17"})
    assert response.status_code == 200 and response.mimetype == "application/x-ndjson"
    assert response.headers["Content-Security-Policy"] == CSP and response.headers["Cache-Control"] == "no-store"
    got = messages(response)
    kinds = [m["kind"] for m in got]
    assert kinds[0] == "start" and kinds[-1] == "done" and set(kinds[1:-1]) == {"rows"} and len(kinds) >= 4
    start = got[0]
    assert start["tokens"] == TEXT.split() and start["lenses"] == ["logit lens", "tuned A", "tuned B"]
    assert start["token_ids"] == {"token": 17} and start["watched"] == [17]
    n = model.cfg.n_layers
    first = got[1]["rows"]
    assert [r["layer"] for r in first] == [n, n, n]  # the model's output row first, for every lens
    rows = {}
    for m in got[1:-1]:
        for r in m["rows"]:
            rows[(r["lens"], r["layer"])] = r
    assert len(rows) == 3 * (n + 1)
    analysis = explorer.analyze(explorer.tokenize(TEXT), [17], 17)
    for lens, traj in enumerate(analysis.trajectories):
        for layer in range(n + 1):
            r = rows[(lens, layer)]
            assert r["kl"] == pytest.approx(traj.kl_to_final[layer, 0].tolist(), abs=1e-4)
            assert r["top"] == traj.top_k_indices[layer, 0, :, :3].tolist()
            assert r["ce"][-1] is None and r["rank"][-1] is None  # no next token at the last position
            if layer > 0:
                assert r["kl_step"] == pytest.approx(traj.kl_steps[layer - 1, 0].tolist(), abs=1e-4)
            assert [w[0] for w in r["watched_rank"]] == analysis.watched_ranks[lens][layer].tolist()
    vocab = {}
    for m in got:
        vocab.update(m.get("vocab", {}))
    assert all(str(t) in vocab for r in rows.values() for top in r["top"] for t in top)
    assert set(got[-1]["seconds"]) >= {"forward", "products", "statistics", "encoding", "total"}


def test_token_text_is_data_escaped_for_plotly(client, explorer):  # noqa: F811
    tokenizer = explorer.token_text
    tokenizer.cache[5] = "<b>&"
    try:
        got = messages(client.post("/api/stream", json={"text": TEXT, "page": "p1", "seq": 2}))
    finally:
        del tokenizer.cache[5]
    assert got[0]["vocab"]["5"] == ["&lt;b&gt;&amp;", "<b>&"]


def test_newer_request_from_the_same_page_cancels_the_older(explorer):  # noqa: F811
    app = ExplorerApp(explorer, log=lambda text: None)
    explorer.cache.clear()
    older = app.progressive.answer({"text": TEXT + " w1", "page": "p2", "seq": 1})
    assert json.loads(next(older))["kind"] == "start"
    newer = app.progressive.answer({"text": TEXT + " w2", "page": "p2", "seq": 2})  # arrives before older computes
    assert [json.loads(line)["kind"] for line in older] == ["cancelled"]
    kinds = [json.loads(line)["kind"] for line in newer]
    assert kinds[-1] == "done"
    other = app.progressive.answer({"text": TEXT, "page": "p3", "seq": 1})  # another page is not cancelled
    assert [json.loads(line)["kind"] for line in other][-1] == "done"


def test_requests_wait_in_a_visible_queue(explorer):  # noqa: F811
    app = ExplorerApp(explorer, log=lambda text: None)
    explorer.lock.acquire()  # another request is running
    try:
        lines = app.progressive.answer({"text": TEXT, "page": "p4", "seq": 1})
        assert json.loads(next(lines))["kind"] == "start"
        assert json.loads(next(lines)) == {"kind": "queued", "ahead": 1}
        done = threading.Event()
        rest = []
        thread = threading.Thread(target=lambda: (rest.extend(json.loads(x)["kind"] for x in lines), done.set()))
        thread.start()
    finally:
        explorer.lock.release()
    thread.join(timeout=120)
    assert done.is_set() and rest[-1] == "done"


@pytest.mark.parametrize("body, message", [
    ({"text": TEXT, "seq": 1}, "page must be"),
    ({"text": TEXT, "page": "a b", "seq": 1}, "page must be"),
    ({"text": TEXT, "page": "p", "seq": -1}, "seq must be a non-negative integer"),
    ({"text": TEXT, "page": "p", "seq": True}, "seq must be a non-negative integer"),
    ({"text": "", "page": "p", "seq": 1}, "the text is empty"),
    ({"text": TEXT, "page": "p", "seq": 1, "position": 99}, "position 99 is out of range"),
    ({"text": TEXT, "page": "p", "seq": 1, "colour": "red"}, "unknown request field"),
])
def test_bad_stream_requests_are_400s(client, body, message):
    response = client.post("/api/stream", json=body)
    assert response.status_code == 400 and message in response.json["error"]


def test_pages_forget_the_oldest(monkeypatch):
    from tl_tunedlens.app import progressive

    monkeypatch.setattr(progressive, "MAX_PAGES", 2)
    pages = Pages()
    cancelled = pages.begin("a", 1)
    pages.begin("b", 1), pages.begin("c", 1)
    assert list(pages.latest) == ["b", "c"] and not cancelled()
    assert pages.begin("b", 0)() and not pages.begin("b", 5)()
