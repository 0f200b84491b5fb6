"""Every lens's per-cell statistics from one run, row by row, at the speed of the vocabulary products.

:func:`stream_rows` decodes a :class:`~tl_tunedlens.analysis.stream.LensRun` with the vocabulary engine
(:mod:`tl_tunedlens.core.vocab`): each lens layer's logits land in a reused ``[pos, d_vocab]`` buffer
(fused ``ln_final`` + ``W_U`` products, :func:`~tl_tunedlens.core.vocab.vocab_products`) and are read once,
in cache-sized row blocks, by :func:`~tl_tunedlens.core.vocab.block_statistics_`: one softmax pass gives
the top-k, entropy, KL to the model's output, KL to the previous layer and the log-probs and ranks of the
next token and of watched tokens. No ``[pos, d_vocab]`` log-probs are written; only ``pos x k`` numbers
per cell are kept. Rows come out in the order a page wants to draw them: the model's output row first,
then the layers from the embeddings up, each row for every lens (:class:`Row`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..core.vocab import block_rows, block_statistics_, vocab_products
from ..errors import LensError
from .stream import LensRun

if TYPE_CHECKING:
    from ..lens import Lens
    from .trajectory import PredictionTrajectory


#: rows of one vocabulary product (several layers and lenses at once): measured with one torch thread on
#: the shared 2-core machine, a [256, d_model] @ W_U product costs 0.67x per row what [32, d_model] ones do
#: (27 vs 40 ms per 32 rows, SmolLM2's W_U), while the logits of
#: two such products (kept for KL to the layer below) stay ~100 MB at SmolLM2's vocabulary
PRODUCT_ROWS = 256


class Cancelled(LensError):
    """The caller asked to stop (a newer request from the same page)."""


@dataclass
class Row:
    """One lens at one lens layer (``n_layers`` = the model's output), every position of ``[batch pos]``
    (nats; ranks 1 = top, 0 where there is no next token; ``target_log_prob`` NaN there).
    ``kl_step`` is ``KL(this layer || the layer below)``; ``None`` at layer 0 and, until the layer below
    is done, at the output row (:attr:`Row.kl_step` of the output row is sent with the last layer)."""

    lens: int
    layer: int
    kl: Float[Tensor, "batch pos"]
    entropy: Float[Tensor, "batch pos"]
    target_log_prob: Float[Tensor, "batch pos"]
    target_rank: Int[Tensor, "batch pos"]
    top_log_probs: Float[Tensor, "batch pos k"]
    top_indices: Int[Tensor, "batch pos k"]
    watched_log_probs: Float[Tensor, "batch pos watch"]
    watched_ranks: Int[Tensor, "batch pos watch"]
    kl_step: Float[Tensor, "batch pos"] | None = None


def row_order(n_layers: int) -> list[int]:
    """The order rows are computed in: the output row (``n_layers``) first, then ``0..n_layers-1``."""
    return [n_layers, *range(n_layers)]


@torch.no_grad()
def stream_rows(run: LensRun, lenses: Sequence["Lens"], targets: Int[Tensor, "batch pos"], *, top_k: int,
                watch: Sequence[int] = (), cancelled: Callable[[], bool] | None = None,
                seconds: dict[str, float] | None = None) -> Iterator[Row]:
    """Rows of every lens of ``run``, output row first (see :func:`row_order`); at each layer one
    :class:`Row` per lens, in the order of ``lenses``. ``targets``: the next token of each position
    (negative: none). ``cancelled()`` is asked before each group of layers; when true, :class:`Cancelled`
    is raised. The output row of each lens is yielded again after the last layer, with its ``kl_step``.
    ``seconds``: adds the time spent in the vocabulary products and in the statistics under
    ``"products"`` and ``"statistics"`` (timing is all it does: no synchronisation on CUDA).

    The vocabulary products of several layers and lenses run as one product of about ``PRODUCT_ROWS``
    rows, which reads ``W_U`` once for all of them (``[pos, d_model]`` products one at a time are bound by
    reading ``W_U``); every row block of it is then scored while in cache."""
    batch, n_pos = targets.shape
    n, vocab, m = run.n_layers, run.final.shape[-1], targets.numel()
    k = max(1, min(int(top_k), vocab))
    products = vocab_products(lenses[0].unembed)
    final = run.final.reshape(m, vocab).float()
    ids = torch.cat([targets.reshape(-1, 1).clamp_min(0),
                     torch.tensor(list(watch), dtype=torch.long).expand(m, len(watch))], 1).to(final.device)
    valid = targets.reshape(-1) >= 0
    rows = min(block_rows(final), m)
    q_buf = torch.empty(rows, vocab, device=final.device)
    p = final.exp()
    neg_entropy = torch.linalg.vecdot(p, final)                          # sum p log p
    expectation = products.expectation_of_logits(p)

    seconds = {} if seconds is None else seconds
    for name in ("products", "statistics"):
        seconds.setdefault(name, 0.0)

    def stats(z: Tensor, other: Tensor | None, p_dot_z: Tensor | None) -> list:
        start = time.perf_counter()
        parts = [block_statistics_(z[r:r + rows], q_buf, ids[r:r + rows], k,
                                   p=None if p_dot_z is not None else p[r:r + rows],
                                   other=None if other is None else other[r:r + rows])
                 for r in range(0, m, rows)]
        values = [torch.cat(v) if v[0] is not None else None for v in zip(*(vars(s).values() for s in parts))]
        if p_dot_z is not None:
            values[6] = p_dot_z
        seconds["statistics"] += time.perf_counter() - start
        return values

    def row(lens: int, layer: int, values: list, kl_step: Tensor | None) -> Row:
        lse, q_dot_z, top_z, top_i, picked, ranks, p_dot_z, _ = values
        lp, shape, w = picked - lse[:, None], (batch, n_pos), len(watch)
        target_lp = torch.where(valid, lp[:, 0], torch.full_like(lse, float("nan")))
        return Row(lens, layer, (neg_entropy - p_dot_z + lse).clamp_min(0).reshape(shape), (lse - q_dot_z).reshape(shape),
                   target_lp.reshape(shape), torch.where(valid, ranks[:, 0], 0).reshape(shape),
                   (top_z - lse[:, None]).reshape(*shape, k), top_i.reshape(*shape, k),
                   lp[:, 1:].reshape(*shape, w), ranks[:, 1:].reshape(*shape, w),
                   None if kl_step is None else kl_step.reshape(shape))

    out_values = stats(final, None, neg_entropy)                          # z = log p: sum p z = sum p log p
    out_values[0] = torch.zeros_like(neg_entropy)                         # and lse 0: KL 0 exactly
    for lens in range(len(lenses)):
        yield row(lens, n, out_values, None)
    per_group = max(1, PRODUCT_ROWS // (len(lenses) * m))                 # layers per product
    buffers = [torch.empty(min(per_group, n) * len(lenses) * m, vocab, device=final.device) for _ in range(2)]
    below: list[tuple[Tensor, Tensor] | None] = [None] * len(lenses)      # per lens: (logits, lse) of the layer below
    last_kl: list[Tensor] = []
    for g, first in enumerate(range(0, n, per_group)):
        if cancelled is not None and cancelled():
            raise Cancelled("cancelled: a newer request replaced this one")
        layers = range(first, min(n, first + per_group))
        start = time.perf_counter()
        x = torch.cat([lens.transform(run.resids[layer].reshape(m, -1), layer) for layer in layers for lens in lenses])
        z_all = products.logits(x, out=buffers[g % 2])
        p_dot = None
        if expectation is not None:
            x_all = products.last_input().float().reshape(-1, m, x.shape[-1])
            p_dot = torch.linalg.vecdot(x_all, expectation[0]) + expectation[1]
        seconds["products"] += time.perf_counter() - start
        for slot, (layer, index) in enumerate((layer, index) for layer in layers for index in range(len(lenses))):
            z = z_all[slot * m:(slot + 1) * m]
            previous = below[index]
            values = stats(z, None if previous is None else previous[0], None if p_dot is None else p_dot[slot])
            kl_step = None if previous is None else ((values[1] - values[0]) - (values[7] - previous[1])).clamp_min(0)
            yield row(index, layer, values, kl_step)
            below[index] = (z, values[0])
            if layer == n - 1:
                last_kl.append((neg_entropy - values[6] + values[0]).clamp_min(0))
    for lens in range(len(lenses)):
        yield row(lens, n, out_values, last_kl[lens])


def trajectory_from_rows(rows: dict[int, Row], tokens: Int[Tensor, "batch pos"], targets: Int[Tensor, "batch pos"],
                         watched: Sequence[int] = (), **kwargs) -> "PredictionTrajectory":
    """The :class:`~tl_tunedlens.analysis.trajectory.PredictionTrajectory` of one lens from its rows
    (``layer -> Row``, layers ``0..n_layers``, the output row with its ``kl_step``); ``kwargs`` are its fields."""
    from .trajectory import PredictionTrajectory

    n = max(rows)
    if sorted(rows) != list(range(n + 1)) or rows[n].kl_step is None:
        raise LensError("a trajectory needs every row, the output row with its kl_step")
    layers = [rows[i] for i in range(n + 1)]
    stack = lambda name: torch.stack([getattr(r, name).cpu() for r in layers])  # noqa: E731
    return PredictionTrajectory(
        tokens=tokens.cpu(), targets=targets.cpu(), top_k_log_probs=stack("top_log_probs"),
        top_k_indices=stack("top_indices"), target_log_probs=stack("target_log_prob"),
        target_ranks=stack("target_rank"), entropies=stack("entropy"), kl_to_final=stack("kl"),
        kl_steps=torch.stack([r.kl_step.cpu() for r in layers[1:]]), watched=list(watched),
        watched_log_probs=stack("watched_log_probs") if watched else None, **kwargs)
