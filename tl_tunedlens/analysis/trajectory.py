"""Prediction trajectories: what a lens predicts at every layer and position, plus statistics.

A :class:`PredictionTrajectory` holds, for lens layers ``0..n_layers`` (the last row is the
model's own output) and every position of a batch of prompts, the top-k predictions, the
log-prob and rank of the actual next token, and exact full-distribution statistics (entropy,
KL to the final row, KL between consecutive layers). These are computed while streaming the
layers one by one, so memory is ``layers x pos x k``, never ``layers x pos x vocab``, unless
``keep_log_probs=True`` asks for the full log-probs too.

Build one from ``(lens, model, tokens)`` with :meth:`PredictionTrajectory.from_model`, from a
``(lens, ActivationCache, model logits)`` triple with :meth:`~PredictionTrajectory.from_cache`,
or from any stack of log-probs with :meth:`~PredictionTrajectory.from_log_probs`.
Comparisons between two lenses (KL, Jensen-Shannon, total variation) are in
:func:`compare_lenses` (streaming) and :func:`compare` (two trajectories with full log-probs).

All statistics are in nats except probabilities and ranks. Row ``l`` of a statistic is lens
layer ``l``; ``delta(name)`` row ``l`` is the change from layer ``l`` to ``l + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from beartype import beartype
from jaxtyping import Float, Int, jaxtyped
from torch import Tensor

from ..core.backend import as_token_batch
from ..core.layers import layer_labels as default_layer_labels
from ..core.unembed import to_log_probs
from ..errors import LensError
from . import stats
from .readouts import TrajectoryReadouts, watch_ids
from .stream import run_once

from ..core.backend import Model

if TYPE_CHECKING:
    from transformer_lens import ActivationCache

    from ..lens import Lens

# name -> (title, unit); the order is the order figures offer them in
STATISTICS: dict[str, tuple[str, str]] = {
    "kl": ("KL(output || layer)", "nats"),
    "entropy": ("entropy", "nats"),
    "ce": ("cross-entropy of the next token", "nats"),
    "prob": ("probability of the next token", "probability"),
    "rank": ("rank of the next token (1 = top)", "rank"),
    "max_prob": ("max probability", "probability"),
    "kl_step": ("KL(layer l+1 || layer l)", "nats"),
}
COMPARISONS: dict[str, tuple[str, str]] = {
    "kl": ("KL(a || b)", "nats"),
    "js": ("Jensen-Shannon divergence", "nats"),
    "tv": ("total variation distance", "probability"),
}


def next_token_targets(tokens: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """``targets[:, t] = tokens[:, t + 1]``; the last position has no target (``-1``)."""
    targets = torch.full_like(tokens, -1)
    targets[:, :-1] = tokens[:, 1:]
    return targets


class _Builder:
    """Accumulates a trajectory row by row (the final distribution is given first)."""

    def __init__(self, final: Tensor, tokens: Tensor | None, targets: Tensor | None, top_k: int, keep_log_probs: bool,
                 watch: Sequence[int] = ()):
        if final.ndim != 3:
            raise LensError(f"each row of log-probs must be [batch pos vocab], got {tuple(final.shape)}")
        batch, n_pos, vocab = final.shape
        tokens = as_token_batch(tokens)
        if tokens is not None and tuple(tokens.shape) != (batch, n_pos):
            raise LensError(f"tokens have shape {tuple(tokens.shape)} but the log-probs are for [batch pos]=[{batch}, {n_pos}]")
        self.tokens = torch.full((batch, n_pos), -1, dtype=torch.long) if tokens is None else tokens
        self.targets = next_token_targets(self.tokens) if targets is None else as_token_batch(targets)
        if tuple(self.targets.shape) != (batch, n_pos):
            raise LensError(f"targets have shape {tuple(self.targets.shape)}, expected [{batch}, {n_pos}]")
        self.final, self.k, self.keep = final, max(1, min(int(top_k), vocab)), keep_log_probs
        self.watch = watch_ids(watch, vocab)
        # one list per field of PredictionTrajectory, a tensor per row
        names = ("top_k_log_probs", "top_k_indices", "target_log_probs", "target_ranks", "entropies", "kl_to_final",
                 "kl_steps", "log_probs", "watched_log_probs")
        self.acc: dict[str, list[Tensor]] = {n: [] for n in names}
        self.previous: Tensor | None = None

    def add(self, lp: Tensor) -> None:
        if lp.shape != self.final.shape:
            raise LensError(f"row {len(self.acc['entropies'])} of log-probs has shape {tuple(lp.shape)}, "
                            f"the final row {tuple(self.final.shape)}")
        acc, targets = self.acc, self.targets.to(lp.device)
        values, indices = lp.topk(self.k, dim=-1)
        acc["top_k_log_probs"].append(values.cpu())
        acc["top_k_indices"].append(indices.cpu())
        acc["target_log_probs"].append(stats.target_log_prob(lp, targets).cpu())
        acc["target_ranks"].append(stats.target_rank(lp, targets).cpu())
        acc["entropies"].append(stats.entropy(lp).cpu())
        acc["kl_to_final"].append(stats.kl_divergence(self.final, lp).cpu())
        if self.previous is not None:
            acc["kl_steps"].append(stats.kl_divergence(lp, self.previous).cpu())
        if self.keep:
            acc["log_probs"].append(lp.cpu())
        if self.watch:
            acc["watched_log_probs"].append(lp[..., self.watch].cpu())
        self.previous = lp

    def finish(self, cls, **kwargs: Any) -> "PredictionTrajectory":
        self.add(self.final)
        acc = {k: torch.stack(v) if v else None for k, v in self.acc.items()}
        return cls(tokens=self.tokens.cpu(), targets=self.targets.cpu(), watched=self.watch, **acc, **kwargs)


@jaxtyped(typechecker=beartype)
@dataclass
class PredictionTrajectory(TrajectoryReadouts):
    """Per lens layer (``0..n_layers``, last row = model output) x prompt x position.

    ``top_k_log_probs``/``top_k_indices``: the ``k`` most likely next tokens (log-probs in nats);
    ``target_log_probs``: log-prob of the actual next token (NaN where there is none: the last
    position); ``target_ranks``: its rank (1 = top, 0 where there is none); ``entropies``;
    ``kl_to_final``: ``KL(output || layer)``; ``kl_steps``: ``KL(layer l+1 || layer l)``;
    ``log_probs``: the full log-probs, only when built with ``keep_log_probs=True``;
    ``watched_log_probs``: the log-probs of the tokens ``watched`` (built with ``watch=[ids]``), enough
    for :meth:`~tl_tunedlens.analysis.readouts.TrajectoryReadouts.logit_diff` without the full log-probs;
    ``target_label``: what the targets are, as figures name them (``"next token"``, or e.g. ``"chosen token"``)."""

    tokens: Int[Tensor, "batch pos"]
    targets: Int[Tensor, "batch pos"]
    top_k_log_probs: Float[Tensor, "layer batch pos k"]
    top_k_indices: Int[Tensor, "layer batch pos k"]
    target_log_probs: Float[Tensor, "layer batch pos"]
    target_ranks: Int[Tensor, "layer batch pos"]
    entropies: Float[Tensor, "layer batch pos"]
    kl_to_final: Float[Tensor, "layer batch pos"]
    kl_steps: Float[Tensor, "step batch pos"]
    log_probs: Float[Tensor, "layer batch pos vocab"] | None = None
    watched: list[int] = field(default_factory=list)
    watched_log_probs: Float[Tensor, "layer batch pos watch"] | None = None
    layer_labels: list[str] = field(default_factory=list)
    lens_name: str = "lens"
    tokenizer: Any = None
    target_label: str = "next token"

    def __post_init__(self) -> None:
        if len(self.kl_steps) != len(self.entropies) - 1:
            raise LensError("kl_steps must have one row fewer than the layers")
        if not self.layer_labels:
            self.layer_labels = default_layer_labels(self.n_rows - 1)

    # --- construction -----------------------------------------------------------------
    @classmethod
    @torch.no_grad()
    def from_log_probs(
        cls,
        log_probs: Float[Tensor, "layer batch pos vocab"] | Callable[[int], Tensor],
        tokens: Int[Tensor, "batch pos"] | Int[Tensor, " pos"] | None = None,
        *,
        n_rows: int | None = None,
        targets: Int[Tensor, "batch pos"] | None = None,
        top_k: int = 10,
        keep_log_probs: bool = False,
        watch: Sequence[int] = (),
        **kwargs: Any,
    ) -> "PredictionTrajectory":
        """Build from log-probs ``[layer batch pos vocab]`` (last row = the final distribution), or
        from a function ``row -> [batch pos vocab]`` log-probs with ``n_rows`` rows, called once per
        row (the final row first) so only two rows are in memory at a time.

        ``targets`` default to the next tokens of ``tokens``; a negative target means none; ``watch``:
        token ids whose log-probs are kept at every layer (see ``watched_log_probs``)."""
        if callable(log_probs) and not isinstance(log_probs, Tensor):
            if n_rows is None:
                raise LensError("pass n_rows with a log-prob function")
            row = log_probs
        else:
            if not isinstance(log_probs, Tensor) or log_probs.ndim != 4:
                raise LensError("log_probs must have shape [layer batch pos vocab]")
            n_rows, row = len(log_probs), log_probs.__getitem__
        if n_rows < 2:
            raise LensError("a trajectory needs at least two rows (a layer and the final output)")
        builder = _Builder(row(n_rows - 1), tokens, targets, top_k, keep_log_probs, watch)
        for i in range(n_rows - 1):
            builder.add(row(i))
        return builder.finish(cls, **kwargs)

    @classmethod
    def from_cache(cls, lens: "Lens", cache: "ActivationCache",
                   model_logits: Float[Tensor, "batch pos vocab"] | None = None, tokens: Tensor | None = None, **kwargs: Any) -> "PredictionTrajectory":
        """Build from a TransformerLens ``ActivationCache`` holding the lens sites (``names_filter=lens.names_filter``).

        The last row is ``model_logits`` (the model's output) when given, else the lens's own final
        layer (identical). Without ``tokens`` the next-token statistics are NaN. ``kwargs`` go to
        :meth:`from_log_probs` (``top_k``, ``keep_log_probs``, ``targets``, ``watch``)."""
        resids = lens.residuals_from_cache(cache)
        n = lens.n_layers

        def row(i: int) -> Tensor:
            if i == n and model_logits is not None:
                if model_logits.shape[:-1] != resids.shape[1:-1]:
                    raise LensError(f"model_logits have shape {tuple(model_logits.shape)} but the cache is for "
                                    f"[batch pos]={list(resids.shape[1:-1])}: pass the logits of the same run")
                return to_log_probs(model_logits)
            return lens.log_probs(resids[i], i)

        kwargs.setdefault("lens_name", _lens_name(lens))
        kwargs.setdefault("tokenizer", getattr(getattr(cache, "model", None), "tokenizer", None))
        kwargs.setdefault("layer_labels", lens.layer_labels)
        return cls.from_log_probs(row, tokens, n_rows=n + 1, **kwargs)

    @classmethod
    @torch.no_grad()
    def from_model(cls, lens: "Lens", model: Model, tokens: Tensor | str,
                   **kwargs: Any) -> "PredictionTrajectory":
        """Run ``model`` on ``tokens`` (ids ``[pos]``/``[batch pos]``, or a string) once, caching only the
        lens's residual-stream hooks (:func:`~tl_tunedlens.analysis.stream.run_once`), and build the trajectory
        (see :meth:`from_log_probs`)."""
        run = run_once(model, [lens], tokens)
        kwargs.setdefault("tokenizer", getattr(model, "tokenizer", None))
        kwargs.setdefault("lens_name", _lens_name(lens))
        kwargs.setdefault("layer_labels", lens.layer_labels)
        return cls.from_log_probs(run.rows(lens), run.tokens, n_rows=run.n_layers + 1, **kwargs)

    # --- shape ------------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        """Number of rows: lens layers ``0..n_layers``, so ``n_layers + 1``."""
        return len(self.entropies)

    batch = property(lambda self: self.tokens.shape[0], doc="Number of prompts.")
    n_pos = property(lambda self: self.tokens.shape[1], doc="Number of positions per prompt.")

    def prompt_index(self, index: int) -> int:
        """``index`` (negative counts from the end) as ``0..batch-1``; a clear error when out of range."""
        if not -self.batch <= index < self.batch:
            raise LensError(f"prompt index {index} is out of range for a batch of {self.batch}")
        return index % self.batch

    def select(self, index: int) -> "PredictionTrajectory":
        """The trajectory of prompt ``index`` alone (batch size 1)."""
        index = self.prompt_index(index)
        return self.take(batch=slice(index, index + 1))

    # --- statistics -------------------------------------------------------------------
    def entropy(self) -> Float[Tensor, "layer batch pos"]:
        """Entropy of each layer's distribution (nats)."""
        return self.entropies

    def kl(self) -> Float[Tensor, "layer batch pos"]:
        """``KL(output || layer)`` (nats); zero on the last row."""
        return self.kl_to_final

    def cross_entropy(self) -> Float[Tensor, "layer batch pos"]:
        """``-log p(next token)`` (nats); NaN where there is no next token."""
        return -self.target_log_probs

    def target_prob(self) -> Float[Tensor, "layer batch pos"]:
        """Probability of the actual next token (NaN where there is none)."""
        return self.target_log_probs.exp()

    def rank(self) -> Float[Tensor, "layer batch pos"]:
        """Rank of the next token (1 = top) as floats, NaN where there is no next token."""
        rank = self.target_ranks.to(self.entropies.dtype)
        return torch.where(self.target_ranks > 0, rank, torch.full_like(rank, float("nan")))

    def max_prob(self) -> Float[Tensor, "layer batch pos"]:
        """Probability of each layer's most likely token."""
        return self.top_k_log_probs[..., 0].exp()

    def statistic(self, name: str) -> Float[Tensor, "row batch pos"]:
        """A statistic by name (see ``STATISTICS``), or ``"delta_<name>"`` for its first-order
        difference between consecutive layers (row ``l`` = layer ``l + 1`` minus layer ``l``)."""
        if name.startswith("delta_"):
            return self.delta(name.removeprefix("delta_"))
        getters = {"entropy": self.entropy, "kl": self.kl, "ce": self.cross_entropy, "prob": self.target_prob,
                   "rank": self.rank, "max_prob": self.max_prob, "kl_step": lambda: self.kl_steps}
        if name not in getters:
            raise LensError(f"unknown statistic {name!r}: use one of {', '.join(getters)} (or delta_<name>)")
        return getters[name]()

    def delta(self, name: str) -> Float[Tensor, "step batch pos"]:
        """First-order difference of a statistic between consecutive layers: ``s[l + 1] - s[l]``."""
        values = self.statistic(name)
        return values[1:] - values[:-1]

    def mean(self, name: str) -> Float[Tensor, " row"]:
        """A statistic averaged over the batch and positions (NaN entries, e.g. no next token, skipped)."""
        return self.statistic(name).flatten(1).nanmean(1)

    def row_labels(self, name: str) -> list[str]:
        """Labels of the rows of ``statistic(name)``."""
        if name == "kl_step" or name.startswith("delta_"):
            return [f"{a}→{b}" for a, b in zip(self.layer_labels[:-1], self.layer_labels[1:])]
        return list(self.layer_labels)

    # --- text -------------------------------------------------------------------------
    def decode(self, token_id: int) -> str:
        """One token as text (``<id>`` without a tokenizer)."""
        token_id = int(token_id)
        if token_id < 0:
            return ""
        if self.tokenizer is None:
            return f"<{token_id}>"
        return self.tokenizer.decode([token_id])

    def input_strings(self, index: int = 0) -> list[str]:
        """The input tokens of prompt ``index`` as text."""
        return [self.decode(t) for t in self.tokens[index].tolist()]


def _lens_name(lens: "Lens") -> str:
    kind = getattr(lens, "lens_type", "lens")
    return {"logit_lens": "logit lens", "tuned_lens": "tuned lens"}.get(kind, kind)


@dataclass
class TrajectoryComparison:
    """Divergences between two lenses' distributions per layer x prompt x position:
    ``kl = KL(a || b)`` and ``js`` in nats, ``tv`` a probability."""

    kl: Float[Tensor, "layer batch pos"]
    js: Float[Tensor, "layer batch pos"]
    tv: Float[Tensor, "layer batch pos"]
    names: tuple[str, str] = ("a", "b")
    layer_labels: list[str] = field(default_factory=list)

    def statistic(self, name: str) -> Float[Tensor, "layer batch pos"]:
        """A comparison by name: ``kl``, ``js`` or ``tv`` (see ``COMPARISONS``)."""
        if name not in COMPARISONS:
            raise LensError(f"unknown comparison {name!r}: use one of {', '.join(COMPARISONS)}")
        return getattr(self, name)

    def mean(self, name: str) -> Float[Tensor, " layer"]:
        """Averaged over the batch and positions."""
        return self.statistic(name).flatten(1).mean(1)


def _divergences(a: Tensor, b: Tensor) -> dict[str, Tensor]:
    """KL(a || b), JS and TV of one row of log-probs ``[batch pos vocab]``, on the CPU."""
    if a.shape != b.shape:
        raise LensError(f"cannot compare log-probs of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return {"kl": stats.kl_divergence(a, b).cpu(), "js": stats.js_divergence(a, b).cpu(),
            "tv": stats.total_variation(a, b).cpu()}


def _stack_rows(rows: list[dict[str, Tensor]], **kwargs: Any) -> TrajectoryComparison:
    return TrajectoryComparison(**{k: torch.stack([r[k] for r in rows]) for k in COMPARISONS}, **kwargs)


def compare(a: PredictionTrajectory, b: PredictionTrajectory) -> TrajectoryComparison:
    """KL(a || b), JS and TV between two trajectories built with ``keep_log_probs=True``."""
    if a.log_probs is None or b.log_probs is None:
        raise LensError("compare() needs full log-probs: build both trajectories with keep_log_probs=True, "
                        "or use compare_lenses(lens_a, lens_b, model, tokens), which streams layer by layer")
    if a.log_probs.shape != b.log_probs.shape:
        raise LensError(f"cannot compare trajectories of shapes {tuple(a.log_probs.shape)} and {tuple(b.log_probs.shape)}")
    rows = [_divergences(a.log_probs[i], b.log_probs[i]) for i in range(a.n_rows)]
    return _stack_rows(rows, names=(a.lens_name, b.lens_name), layer_labels=list(a.layer_labels))


@torch.no_grad()
def trajectory_pair(lens_a: "Lens", lens_b: "Lens", model: Model, tokens: Tensor | str, *,
                    targets: Tensor | None = None, top_k: int = 10, keep_log_probs: bool = False,
                    watch: Sequence[int] = ()) -> tuple[PredictionTrajectory, PredictionTrajectory, TrajectoryComparison]:
    """Trajectories of two lenses (e.g. logit and tuned) and their comparison (KL(a || b), JS, TV),
    from one forward pass, streaming layer by layer (two layers' log-probs in memory at a time)."""
    run = run_once(model, [lens_a, lens_b], tokens)
    n = run.n_layers
    builders = [_Builder(run.final, run.tokens, targets, top_k, keep_log_probs, watch) for _ in range(2)]
    rows = []
    for i in range(n + 1):
        a, b = run.log_probs(lens_a, i), run.log_probs(lens_b, i)
        rows.append(_divergences(a, b))
        if i < n:
            builders[0].add(a)
            builders[1].add(b)
    labels = lens_a.layer_labels
    trajs = [bld.finish(PredictionTrajectory, lens_name=_lens_name(lens), tokenizer=getattr(model, "tokenizer", None),
                        layer_labels=list(labels)) for bld, lens in zip(builders, (lens_a, lens_b))]
    return trajs[0], trajs[1], _stack_rows(rows, names=(trajs[0].lens_name, trajs[1].lens_name), layer_labels=labels)


def compare_lenses(lens_a: "Lens", lens_b: "Lens", model: Model,
                   tokens: Tensor | str) -> TrajectoryComparison:
    """KL(a || b), JS and TV between two lenses on ``model`` run once on ``tokens``, one layer at a
    time (memory ``layers x pos``, never ``layers x pos x vocab``). See :func:`trajectory_pair`."""
    return trajectory_pair(lens_a, lens_b, model, tokens, top_k=1)[2]
