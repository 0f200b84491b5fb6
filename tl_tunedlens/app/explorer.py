"""The explorer's computations, independent of any web server.

:class:`~tl_tunedlens.app.explorer.Explorer` holds a model and its lenses (the logit lens first, then each tuned lens), loaded
once. For a text it runs the model once (``run_with_cache`` on the lens hook names) and streams every
lens's rows, the model's output row first (:func:`~tl_tunedlens.analysis.cells.stream_rows`: the vocabulary
products batched over layers, the statistics fused into one row-block pass), keeping besides the
log-probs and ranks of a few *watched* tokens (the chosen token, the two tokens of the logit
difference), so memory stays ``lenses x layers x pos x k``. :meth:`Explorer.compute` yields the rows in
blocks as they are ready (the page's progressive answers, :mod:`.progressive`) and ends with the
:class:`Analysis` (rows and :class:`~tl_tunedlens.analysis.trajectory.PredictionTrajectory`). Analyses are
cached per (text, watched tokens), so changing the statistic, top-k or position needs no model run.

:meth:`Explorer.respond` turns one request (:class:`~tl_tunedlens.app.query.Query`) into plotly figures (``POST /api/analyze``,
and from Python): the heatmap figure, the logit-difference figure and the table of one position. Every bad input raises
:class:`~tl_tunedlens.errors.LensError` with a one-line message, checked before any work starts.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..analysis.cells import Row, stream_rows, trajectory_from_rows
from ..analysis.trajectory import PredictionTrajectory, next_token_targets
from ..core.backend import to_tokens
from ..analysis.stream import run_once
from ..errors import LensError
from ..lens import LogitLens, TunedLens
from ..viz.plots import compare_heatmaps
from ..viz.report import report_html
from .figures import logit_difference_figure, visible_token
from .query import NEED_TOKEN, STAT_CHOICES, TYPED_TOKENS, Limits, Query  # noqa: F401  (re-exported)

from ..core.backend import Model

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from ..lens import Lens

LOGIT_LENS = "logit lens"
@dataclass
class Analysis:
    """Every lens's rows of one text (logit lens first; :class:`~tl_tunedlens.analysis.cells.Row`, ``rows[lens][layer]``),
    their trajectories, plus per lens the watched tokens' log-probs (nats, ``[layer pos watch]``, ``layer`` =
    ``0..n_layers``) and the ranks (1 = top, ``[layer pos]``) of token ``ranked`` (``None`` when no token is ranked)."""

    tokens: Int[Tensor, "1 pos"]
    rows: list[dict[int, Row]]
    watched: tuple[int, ...]
    ranked: int | None = None
    seconds: float = 0.0
    names: list[str] = field(default_factory=list)
    uses: int = 1
    trajectories: list[PredictionTrajectory] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)   # seconds: forward, products, statistics

    @property
    def watched_log_probs(self) -> list[Float[Tensor, "layer pos watch"]]:
        """Per lens, the log-probs (nats) of the watched tokens at every layer and position."""
        return [torch.stack([rows[i].watched_log_probs[0] for i in sorted(rows)]) for rows in self.rows]

    @property
    def watched_ranks(self) -> list[Int[Tensor, "layer pos"] | None]:
        """Per lens, the rank (0: top) of the ranked watched token at every layer and position; ``None`` without one."""
        if self.ranked is None:
            return [None] * len(self.rows)
        j = self.watch_index(self.ranked)
        return [torch.stack([rows[i].watched_ranks[0, :, j] for i in sorted(rows)]) for rows in self.rows]

    def watch_index(self, token_id: int) -> int:
        """The column of ``token_id`` in the watched-token log-probs."""
        return self.watched.index(token_id)


@dataclass
class Prepared:
    """A query checked against the model: its tokens, the position (``0..pos-1``), the typed tokens' ids
    (``Query`` field -> id) and notes for the page."""

    tokens: Int[Tensor, "1 pos"]
    position: int
    ids: dict[str, int]
    notes: list[str]


class _TokenText:
    """The text of single tokens (a tokenizer's ``decode``), cached (figures decode each top-k token once per cell)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer, self.cache = tokenizer, {}

    def decode(self, ids: Sequence[int]) -> str:
        if len(ids) != 1:
            return self.tokenizer.decode(list(ids))
        key = int(ids[0])
        if key not in self.cache:
            self.cache[key] = self.tokenizer.decode([key])
        return self.cache[key]


class Explorer:
    """A model and its lenses, loaded once; answers the page's queries (thread-safe: one at a time).

    ``lenses`` maps a display name to a tuned lens of ``model`` (checked here). The logit lens is
    always shown first. ``cache_size`` analyses are kept."""

    def __init__(self, model: Model, lenses: Mapping[str, "Lens"] | None = None, *,
                 limits: Limits | None = None, cache_size: int = 8):
        if getattr(model, "tokenizer", None) is None:
            raise LensError("the explorer needs a model with a tokenizer (the page sends text)")
        lenses = dict(lenses or {})
        if LOGIT_LENS in lenses:
            raise LensError(f"{LOGIT_LENS!r} is the logit lens's name: give the tuned lens another name")
        for name, lens in lenses.items():
            lens.check_model(model)
        hooks = {tuple(lens.hook_names) for lens in lenses.values()}
        if len(hooks) > 1:
            raise LensError("the tuned lenses read different hook points: serve lenses trained on the same hooks")
        self.model, self.limits = model, limits or Limits()
        self.lenses: dict[str, "Lens"] = {LOGIT_LENS: LogitLens.from_model(model, hook_names=next(iter(hooks), None)),
                                              **lenses}
        self.token_text = _TokenText(model.tokenizer)
        self.cache: OrderedDict[tuple, Analysis] = OrderedDict()
        self.cache_size = cache_size
        self.lock = threading.Lock()

    @property
    def tuned_names(self) -> list[str]:
        """The names of the tuned lenses (every lens but the logit lens)."""
        return [name for name in self.lenses if name != LOGIT_LENS]

    @property
    def model_name(self) -> str:
        """The model's name, as shown on the page."""
        return str(getattr(self.model.cfg, "model_name", "model"))

    def settings(self) -> dict[str, Any]:
        """What the page needs to draw its controls."""
        return {"model": self.model_name, "n_layers": int(self.model.cfg.n_layers), "lenses": list(self.lenses),
                "tuned": self.tuned_names, "stats": STAT_CHOICES, "limits": vars(self.limits)}

    # --- input --------------------------------------------------------------------------
    def tokenize(self, text: str) -> Int[Tensor, "1 pos"]:
        """``text`` as token ids ``[1, pos]``; a :class:`~tl_tunedlens.errors.LensError` if empty or over ``limits.max_tokens``."""
        tokens = to_tokens(self.model, text)
        if tokens.shape[1] > self.limits.max_tokens:
            raise LensError(f"the text is {tokens.shape[1]} tokens long; the limit is {self.limits.max_tokens} "
                            "(shorten it, or restart serve with a larger --max-tokens)")
        return tokens

    def token_id(self, typed: str, what: str = "token") -> int:
        """The id of a typed token, kept exactly as typed (a leading space matters); one token only."""
        ids = self.model.tokenizer.encode(typed, add_special_tokens=False)
        if len(ids) != 1:
            pieces = " + ".join(repr(self.token_text.decode([i])) for i in ids) or "nothing"
            raise LensError(f"{what} {typed!r} is {len(ids)} tokens ({pieces}): type a single token, "
                            "with its leading space if it has one (e.g. ' Paris')")
        return int(ids[0])

    # --- the computation -----------------------------------------------------------------
    def analyze(self, tokens: Int[Tensor, "1 pos"], watched: Sequence[int] = (), ranked: int | None = None, *,
                top_k: int | None = None) -> Analysis:
        """Every lens's trajectory of ``tokens`` from one forward pass (top ``top_k`` kept, default the
        limit), the watched tokens' log-probs and the rank of token ``ranked``. Cached."""
        for item in self.compute(tokens, watched, ranked, top_k=top_k):
            if isinstance(item, Analysis):
                return item
        raise AssertionError("compute() ends with its analysis")

    @torch.no_grad()
    def compute(self, tokens: Int[Tensor, "1 pos"], watched: Sequence[int] = (), ranked: int | None = None, *,
                top_k: int | None = None, cancelled: Callable[[], bool] | None = None
                ) -> Iterator[list[Row] | Analysis]:
        """:meth:`analyze`, step by step: yields blocks of rows as they are computed (the model's output row
        first, then the layers in blocks of doubling size: 0-1, 2-3, 4-7, 8-15, ...; every lens's row of each layer), then the
        :class:`Analysis`. A cached analysis yields all its rows at once. ``cancelled``: see
        :func:`~tl_tunedlens.analysis.cells.stream_rows`."""
        watched = tuple(dict.fromkeys([int(t) for t in watched] + ([int(ranked)] if ranked is not None else [])))
        k = top_k or self.limits.max_top_k
        key = (tuple(tokens[0].tolist()), watched, ranked, k)
        if key in self.cache:
            self.cache.move_to_end(key)
            analysis = self.cache[key]
            analysis.uses += 1
            yield [row for rows in analysis.rows for row in rows.values()]
            yield analysis
            return
        start = time.perf_counter()
        lenses = list(self.lenses.values())
        run = run_once(self.model, lenses, tokens)   # one forward pass for every lens
        stages = {"forward": time.perf_counter() - start}
        targets = next_token_targets(run.tokens)
        rows: list[dict[int, Row]] = [{} for _ in lenses]
        block, flush_at, n = [], 0, run.n_layers
        for row in stream_rows(run, lenses, targets, top_k=k, watch=watched, cancelled=cancelled, seconds=stages):
            rows[row.lens][row.layer] = row
            block.append(row)
            if row.lens == len(lenses) - 1 and (row.layer == n or row.layer == flush_at):
                yield block
                block, flush_at = [], (2 * flush_at + 1 if row.layer < n else 1)
        labels = lenses[0].layer_labels
        trajs = [trajectory_from_rows(r, run.tokens, targets, watched, lens_name=name,
                                      tokenizer=self.token_text, layer_labels=list(labels))
                 for r, name in zip(rows, self.lenses)]
        analysis = Analysis(tokens.cpu(), rows, watched, ranked, time.perf_counter() - start, list(self.lenses),
                            trajectories=trajs, stages=stages)
        self.cache[key] = analysis
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        yield analysis

    # --- what the page draws ---------------------------------------------------------------
    def heatmap(self, analysis: Analysis, stat: str, top_k: int, token: int | None = None) -> "go.Figure":
        """Every lens side by side on one colour scale; ``token_*`` statistics need ``token`` (watched)."""
        trajs = analysis.trajectories
        title = None
        if stat.startswith("token_"):
            if token is None or token != analysis.ranked:
                raise LensError(NEED_TOKEN)
            j = analysis.watch_index(token)
            trajs = [replace(t, targets=torch.full_like(t.targets, token), target_log_probs=lp[..., j].unsqueeze(1),
                             target_ranks=rk.unsqueeze(1), target_label="chosen token")
                     for t, lp, rk in zip(trajs, analysis.watched_log_probs, analysis.watched_ranks)]
            stat = stat.removeprefix("token_")
            label = f"{'probability' if stat == 'prob' else 'rank (1 = top)'} of {visible_token(self.token_text.decode([token]))!r}"
            title = f"{label}: " + " vs ".join(analysis.names)
        fig = compare_heatmaps(trajs, stat, top_k=top_k, title=title)
        fig.update_layout(margin={"t": 70, "l": 60, "r": 20, "b": 90})
        return fig

    def logit_difference(self, analysis: Analysis, a: int, b: int, position: int) -> "go.Figure":
        """Per layer, ``logit(a) - logit(b)`` (= ``log p(a) - log p(b)``, nats) at ``position``, per lens."""
        ja, jb = analysis.watch_index(a), analysis.watch_index(b)
        diffs = {name: (lp[:, position, ja] - lp[:, position, jb]).tolist()
                 for name, lp in zip(analysis.names, analysis.watched_log_probs)}
        traj = analysis.trajectories[0]
        return logit_difference_figure(diffs, traj.layer_labels, self.token_text.decode([a]), self.token_text.decode([b]),
                                       position, traj.input_strings()[position])

    def position_table(self, analysis: Analysis, position: int, top_k: int) -> dict[str, Any]:
        """Per layer and lens at ``position``: the top-``top_k`` tokens with probabilities, KL to the
        output and entropy (nats)."""
        traj = analysis.trajectories[0]
        target = int(traj.targets[0, position])
        lenses = []
        for t in analysis.trajectories:
            ids = t.top_k_indices[:, 0, position, :top_k].tolist()
            probs = t.top_k_log_probs[:, 0, position, :top_k].exp().tolist()
            lenses.append({"name": t.lens_name, "rows": [
                {"kl": _finite(t.kl_to_final[r, 0, position]), "entropy": _finite(t.entropies[r, 0, position]),
                 "top": [[visible_token(t.decode(i)), round(p, 4)] for i, p in zip(ids[r], probs[r])]}
                for r in range(t.n_rows)]})
        return {"position": position, "token": visible_token(traj.input_strings()[position]),
                "next": visible_token(traj.decode(target)) if target >= 0 else None,
                "layers": list(traj.layer_labels), "lenses": lenses}

    def prepare(self, query: Query) -> "Prepared":
        """``query`` checked against the model (tokens, position, typed tokens), before any work starts."""
        query.check(self.limits)
        tokens = self.tokenize(query.text)
        n_pos = tokens.shape[1]
        if not -n_pos <= query.position < n_pos:
            raise LensError(f"position {query.position} is out of range: the text has {n_pos} tokens")
        ids = {key: self.token_id(getattr(query, key), name) for key, name in TYPED_TOKENS.items() if getattr(query, key)}
        if query.stat.startswith("token_") and "token" not in ids:
            raise LensError(NEED_TOKEN)
        notes = ["type both tokens A and B to see their logit difference"] if ("diff_a" in ids) != ("diff_b" in ids) else []
        return Prepared(tokens, query.position % n_pos, ids, notes)

    def respond(self, query: Query) -> dict[str, Any]:
        """Everything the page draws for ``query``: checked first, then computed (one query at a time)."""
        prepared = self.prepare(query)
        position, ids = prepared.position, prepared.ids
        with self.lock:
            analysis = self.analyze(prepared.tokens, list(ids.values()), ids.get("token"))
            started = time.perf_counter()
            figure = self.heatmap(analysis, query.stat, query.top_k, ids.get("token")) if query.what == "all" else None
            diff = (self.logit_difference(analysis, ids["diff_a"], ids["diff_b"], position)
                    if "diff_a" in ids and "diff_b" in ids else None)
            table = self.position_table(analysis, position, query.top_k)
        return {"tokens": [visible_token(s) for s in analysis.trajectories[0].input_strings()], "position": position,
                "figure": figure, "diff_figure": diff, "table": table, "notes": prepared.notes,
                "token_ids": {name: i for name, i in ids.items()},
                "seconds": {"model_and_lenses": round(analysis.seconds, 3), "cached": analysis.uses > 1,
                            "figures": round(time.perf_counter() - started, 3)}}

    def report(self, query: Query) -> str:
        """The offline page ``tl-tunedlens show`` writes, for ``query.text`` and the tuned lens
        ``query.lens`` (the first by default; an untrained one, equal to the logit lens, if none)."""
        query.check(self.limits)
        tuned = self.tuned_names
        if query.lens and query.lens not in tuned:
            raise LensError(f"no tuned lens named {query.lens!r}: choose one of {', '.join(tuned) or '(none loaded)'}")
        with self.lock:
            tokens = self.tokenize(query.text)
            if tokens.shape[1] < 2:
                raise LensError("the page needs a text of at least 2 tokens")
            lens = self.lenses[query.lens or tuned[0]] if tuned else TunedLens.from_model(self.model)
            return report_html(self.model, lens, query.text, logit_lens=self.lenses[LOGIT_LENS], top_k=query.top_k,
                               title=f"Logit lens vs {query.lens or (tuned[0] if tuned else 'tuned lens')}")


def _finite(value: Tensor | float) -> float | None:
    value = float(value)
    return round(value, 4) if math.isfinite(value) else None
