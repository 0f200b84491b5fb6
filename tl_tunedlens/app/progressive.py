"""Progressive answers: the page's figures arrive row block by row block, and a newer request from the
same page cancels the older one.

``POST /api/stream`` answers a :class:`~tl_tunedlens.app.query.Query` (plus ``page``, an id the page
picks once, and ``seq``, its request counter) as newline-delimited JSON, one message a line:

- ``{"kind": "start", "ids", "tokens", "position", "layers", "lenses", "token_ids", "watched", "top_k", "notes"}``
  once the query is checked (a bad query is a ``400`` before any line);
- ``{"kind": "queued", "ahead": n}`` while other pages' requests run first;
- ``{"kind": "rows", "rows": [...], "vocab": {id: [plotly text, plain text]}}``: the model's output row
  first, then the layers in blocks (:meth:`~tl_tunedlens.app.explorer.Explorer.compute`); each row is one
  lens at one layer as compact per-position arrays (:func:`encode_row`), never a figure: the page builds
  its heatmap, table and logit difference from them, so changing the statistic, top-k or position
  needs no request;
- ``{"kind": "done", "seconds": {...}}`` (the stages: forward, products, statistics, encoding), or
  ``{"kind": "cancelled"}`` when a newer request from the same page replaced this one, or
  ``{"kind": "error", "error": "<one line>"}``.

Token texts travel as data: ``vocab`` gives each token's plotly-safe text (HTML-escaped, whitespace made
visible) and its plain text (for ``textContent``).
"""

from __future__ import annotations

import json
import re
import threading
import time
import traceback
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import torch
from torch import Tensor

from ..analysis.cells import Cancelled, Row
from ..errors import LensError, first_line
from ..viz.plots import display_token
from .query import Query
from .figures import visible_token

if TYPE_CHECKING:
    from .explorer import Explorer

PAGE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: the pages whose latest request is remembered (older ones are forgotten first)
MAX_PAGES = 256


def _numbers(values: Tensor, digits: int = 4) -> list:
    """``values`` as (nested) lists rounded to ``digits`` decimals, ``None`` for NaN/inf (JSON has no NaN)."""
    values = values.double()
    scale = 10.0 ** digits
    finite = values.isfinite()
    rounded = torch.where(finite, (values * scale).round() / scale, torch.nan).tolist()
    if bool(finite.all()):
        return rounded

    def clean(x: Any) -> Any:
        return [clean(v) for v in x] if isinstance(x, list) else (None if x != x else x)

    return clean(rounded)


def encode_row(row: Row, top_k: int) -> dict[str, Any]:
    """One lens at one layer, prompt 0, as JSON-ready per-position arrays: ``kl``, ``entropy``, ``ce``
    (nats; ``None`` where there is no next token), ``rank`` of the next token (``None`` there),
    ``kl_step`` (``KL(this || layer below)``, ``None`` if not known), ``top``/``top_p`` (the top-``top_k``
    token ids and probabilities per position), ``watched``/``watched_rank`` (log-probs and ranks of the
    watched tokens, ``[pos][watch]``)."""
    rank = row.target_rank[0].double()
    return {
        "lens": row.lens, "layer": row.layer, "kl": _numbers(row.kl[0]), "entropy": _numbers(row.entropy[0]),
        "ce": _numbers(-row.target_log_prob[0]), "rank": _numbers(torch.where(rank > 0, rank, torch.nan), 0),
        "kl_step": None if row.kl_step is None else _numbers(row.kl_step[0]),
        "top": row.top_indices[0, :, :top_k].tolist(), "top_p": _numbers(row.top_log_probs[0, :, :top_k].exp()),
        "watched": _numbers(row.watched_log_probs[0]), "watched_rank": row.watched_ranks[0].tolist(),
    }


class Pages:
    """The latest request (``seq``) of each page, so that a newer request cancels older ones from the same page."""

    def __init__(self) -> None:
        self.latest: OrderedDict[str, int] = OrderedDict()
        self.lock = threading.Lock()
        self.waiting = 0

    def begin(self, page: str, seq: int) -> Callable[[], bool]:
        """Record request ``seq`` of ``page``; returns ``cancelled()``: whether a newer one came since."""
        with self.lock:
            self.latest[page] = max(seq, self.latest.get(page, seq))
            self.latest.move_to_end(page)
            while len(self.latest) > MAX_PAGES:
                self.latest.popitem(last=False)
        return lambda: self.latest.get(page, seq) > seq


def page_and_seq(data: Any) -> tuple[str, int, dict]:
    """``(page, seq, the query's fields)`` from the request JSON; one-line errors."""
    if not isinstance(data, Mapping):
        raise LensError("the request must be a JSON object")
    fields = dict(data)
    page, seq = fields.pop("page", None), fields.pop("seq", None)
    if not isinstance(page, str) or not PAGE_ID.fullmatch(page):
        raise LensError("page must be 1-64 letters, digits, '-' or '_' (an id the page picks once)")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**53:
        raise LensError(f"seq must be a non-negative integer (the page's request counter), got {seq!r}")
    return page, seq, fields


class Progressive:
    """``POST /api/stream`` of an :class:`~tl_tunedlens.app.explorer.Explorer` (see the module docstring)."""

    def __init__(self, explorer: "Explorer", log: Callable[[str], None] = print):
        self.explorer, self.pages, self.log = explorer, Pages(), log

    def answer(self, data: Any) -> Iterator[bytes]:
        """The lines answering the request JSON ``data``; the query is checked here, before any line."""
        page, seq, fields = page_and_seq(data)
        query = Query.from_json(fields, self.explorer.limits)
        prepared = self.explorer.prepare(query)
        cancelled = self.pages.begin(page, seq)
        return self._lines(query, prepared, cancelled)

    def _lines(self, query: Query, prepared, cancelled: Callable[[], bool]) -> Iterator[bytes]:
        explorer, seconds = self.explorer, {"encoding": 0.0}
        text = explorer.token_text
        shown: set[int] = set()

        def line(message: dict) -> bytes:
            start = time.perf_counter()
            data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
            seconds["encoding"] += time.perf_counter() - start
            return data

        def vocab(ids: list[int]) -> dict[str, list[str]]:
            new = [i for i in dict.fromkeys(ids) if i not in shown]
            shown.update(new)
            return {str(i): [display_token(text.decode([i])), visible_token(text.decode([i]))] for i in new}

        tokens = prepared.tokens[0].tolist()
        first = next(iter(explorer.lenses.values()))
        watched = list(dict.fromkeys(prepared.ids.values()))
        yield line({"kind": "start", "ids": tokens, "tokens": [visible_token(text.decode([t])) for t in tokens],
                    "position": prepared.position, "layers": list(first.layer_labels), "lenses": list(explorer.lenses),
                    "token_ids": prepared.ids, "watched": watched, "top_k": query.top_k, "notes": prepared.notes,
                    "vocab": vocab(tokens + watched)})
        if not explorer.lock.acquire(blocking=False):
            with self.pages.lock:
                self.pages.waiting += 1
                ahead = self.pages.waiting
            try:
                yield line({"kind": "queued", "ahead": ahead})
                while not explorer.lock.acquire(timeout=0.1):
                    if cancelled():
                        yield line({"kind": "cancelled"})
                        return
            finally:
                with self.pages.lock:
                    self.pages.waiting -= 1
        try:
            if cancelled():
                yield line({"kind": "cancelled"})
                return
            started = time.perf_counter()
            for item in explorer.compute(prepared.tokens, watched, prepared.ids.get("token"), cancelled=cancelled):
                if isinstance(item, list):
                    rows = [encode_row(row, query.top_k) for row in item]
                    yield line({"kind": "rows", "rows": rows,
                                "vocab": vocab([t for r in rows for top in r["top"] for t in top])})
                else:
                    stages = {name: round(value, 4) for name, value in item.stages.items()}
                    yield line({"kind": "done", "cached": item.uses > 1, "seconds": {
                        **stages, "encoding": round(seconds["encoding"], 4),
                        "total": round(time.perf_counter() - started, 4)}})
        except Cancelled:
            yield line({"kind": "cancelled"})
        except LensError as err:
            yield line({"kind": "error", "error": first_line(err)})
        except Exception as err:  # a bug: keep serving, tell the page, log the traceback
            self.log(traceback.format_exc())
            yield line({"kind": "error", "error": f"internal error ({type(err).__name__}: {first_line(err)}); "
                                                  "see the server's log"})
        finally:
            explorer.lock.release()
