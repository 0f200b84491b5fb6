"""Evaluating the logit lens and a tuned lens per layer on held-out tokens.

For every lens layer ``0..n_layers`` and every position that has a next token:

- ``kl``: KL(model's final distribution || lens distribution), nats;
- ``ce``: cross-entropy of the lens against the actual next token, nats;
- ``entropy``: entropy of the lens distribution, nats;
- ``top1``: fraction of positions where the lens's top-1 token equals the model's top-1 (a tie
  for the lens's top logit counts when it includes the model's top-1);

plus the model's own CE and entropy (``baseline``). Each nat value also appears in bits per byte
(``nats / bytes_per_token / ln 2``). At layer ``n_layers`` both lenses are the model itself
(``kl = 0``, ``top1 = 1``). Positions are taken in order (first sequences first): deterministic.

Speed: :class:`LensEvaluator` runs the vocabulary engine training runs too
(:mod:`tl_tunedlens.core.vocab`: fused products, the model's distribution computed once per chunk and
shared by both lenses, one softmax pass per row block, reused buffers), so evaluation runs near the
FLOP bound like training (``make bench``); only the metrics are written here. Optional lower-precision (bf16) lens products report their measured KL error.

Under ``torchrun`` (``dist=``) each rank scores a contiguous share of the sequences and the sums are
added over the ranks (:meth:`LensEvaluator.all_reduce_`): every rank returns the same metrics.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..core.backend import capture_residuals, flatten_tokens
from ..core.distributed import SINGLE, Dist
from ..core.vocab import CHUNK_TOKENS, block_rows, distribution_, softmax_lse_, vocab_products
from ..data.tokens import bits_per_byte
from ..errors import LensError
from ..lens import LogitLens
from .metrics import EvalMetrics, check_finite_metrics

from ..core.backend import Model

if TYPE_CHECKING:
    from ..core.unembed import Unembed
    from ..lens import Lens, TunedLens

METRICS = ("kl", "ce", "entropy", "top1")


def _bpb(values: dict[str, float], bytes_per_token: float) -> dict[str, float]:
    return {k: bits_per_byte(v, bytes_per_token) for k, v in values.items() if k != "top1"}


@torch.no_grad()
def evaluate_lenses(model: Model, sequences: Int[Tensor, "n_seq seq_len"], *,
                    tuned: "TunedLens | None" = None, bytes_per_token: float = math.nan,
                    max_tokens: int | None = None, chunk_tokens: int = CHUNK_TOKENS, micro_batch: int | None = None,
                    matmul_dtype: torch.dtype | None = None, progress: bool = False, dist: Dist = SINGLE) -> EvalMetrics:
    """Metrics of the logit lens (and ``tuned``, if given) on ``sequences``; see the module docstring.

    ``max_tokens``: evaluate only the first ``ceil(max_tokens / (seq_len - 1))`` sequences.
    ``matmul_dtype``: e.g. ``torch.bfloat16`` for the lenses' vocabulary products (the model's own
    distribution stays in its precision); then the first chunk is also scored in the model's precision
    and the largest per-layer KL difference is reported under ``"precision"``. ``dist``: this rank of a
    ``torchrun`` run (:mod:`tl_tunedlens.core.distributed`); it scores its share of the sequences.
    Returns the metrics dict (JSON-ready, nats, plus ``bits_per_byte`` entries; see :mod:`.metrics`)."""
    from ..core.progress import progress_bar as tqdm

    if tuned is not None:
        tuned.check_model(model)
    logit = LogitLens.from_model(model, hook_names=None if tuned is None else tuned.hook_names,
                                 unembed=None if tuned is None else tuned.unembed)
    lenses = {"logit": logit} | ({"tuned": tuned} if tuned is not None else {})
    n_seq = n_eval_sequences(sequences, max_tokens)
    micro = micro_batch or max(1, chunk_tokens // sequences.shape[1])
    evaluator = LensEvaluator(lenses, logit.unembed, chunk_tokens=chunk_tokens, matmul_dtype=matmul_dtype)
    mine = dist.shard(range(n_seq))
    for start in tqdm(range(mine.start, mine.stop, micro), desc="eval", disable=not (progress and dist.is_main),
                      leave=False):
        batch = sequences[start:min(start + micro, mine.stop)]
        resids = flatten_tokens(capture_residuals(model, batch, logit.hook_names)[:, :, :-1])
        evaluator.add(resids, batch[:, 1:].flatten())
    evaluator.all_reduce_(dist)
    return check_finite_metrics(evaluator.metrics(str(getattr(model.cfg, "model_name", "")), logit.hook_names, bytes_per_token))


def n_eval_sequences(sequences: Tensor, max_tokens: int | None) -> int:
    """How many of ``sequences`` (``[n_seq, seq_len >= 2]``, checked) hold ``max_tokens`` scored positions."""
    if sequences.ndim != 2 or sequences.shape[1] < 2 or len(sequences) == 0:
        raise LensError("evaluation needs token sequences of shape [n_seq, seq_len >= 2]: pass more text")
    per_seq = sequences.shape[1] - 1
    return len(sequences) if max_tokens is None else max(1, min(len(sequences), -(-int(max_tokens) // per_seq)))


class LensEvaluator:
    """Running metric sums (fp64) of each lens per layer, and of the model itself, fed residuals.

    The vocabulary engine (:mod:`tl_tunedlens.core.vocab`): per chunk of positions the
    model's distribution ``p`` is computed once and shared by every lens and layer; each layer's
    logits land in one reused ``[chunk, d_vocab]`` buffer and are scored in cache-sized row blocks by
    one softmax pass and one or two dot products (``_score_block``; for a linear unembedding
    ``sum p z`` comes from ``p W_U^T``, one ``[chunk, d_model]`` product per chunk shared by every layer);
    ``p`` and the block's ``q`` live in reused buffers. Everything is exact over the full vocabulary.
    ``layers``: score only these lens layers (``0..n_layers-1``; default all)."""

    def __init__(self, lenses: dict[str, "Lens"], unembed: "Unembed", *, chunk_tokens: int = CHUNK_TOKENS,
                 matmul_dtype: torch.dtype | None = None, layers: list[int] | None = None):
        self.lenses, self.chunk_tokens = lenses, chunk_tokens
        self.n_layers = next(iter(lenses.values())).n_layers
        self.layers = list(range(self.n_layers)) if layers is None else list(layers)  # the layers scored
        self.products = vocab_products(unembed, matmul_dtype)
        self.exact = None if self.products.is_exact else vocab_products(unembed)  # to measure the error
        device = unembed.device
        self.per_layer = {name: torch.zeros(self.n_layers, len(METRICS), dtype=torch.float64, device=device)
                          for name in lenses}
        self.base = torch.zeros(2, dtype=torch.float64, device=device)  # the model's CE and entropy
        self.count = 0
        self.precision: dict | None = None
        self._p: Tensor | None = None
        self._q: Tensor | None = None
        self._out: Tensor | None = None

    @torch.no_grad()
    def add(self, resids: Float[Tensor, "layer n d_model"], labels: Int[Tensor, " n"]) -> None:
        """``n`` positions: the residual of every lens layer and the next token of each."""
        labels = labels.to(resids.device)
        for c in range(0, resids.shape[1], self.chunk_tokens):
            chunk, lab = resids[:, c:c + self.chunk_tokens], labels[c:c + self.chunk_tokens, None]
            exact = None
            if self.exact is not None and self.count == 0:  # the first chunk, also in the model's precision
                exact = {name: torch.zeros_like(t) for name, t in self.per_layer.items()}
                self._add_chunk(chunk, lab, self.exact, exact, torch.zeros_like(self.base))
            self._add_chunk(chunk, lab, self.products, self.per_layer, self.base)
            if exact is not None:
                error = max(float((self.per_layer[n][:, 0] - exact[n][:, 0]).abs().max()) for n in exact)
                self.precision = {"matmul_dtype": str(self.products.matmul_dtype).removeprefix("torch."),
                                  "checked_tokens": int(lab.shape[0]), "max_kl_error": error / lab.shape[0]}
            self.count += int(lab.shape[0])

    def all_reduce_(self, dist: Dist) -> None:
        """Add every rank's sums into every rank's (the precision check stays rank 0's: the first chunk)."""
        if not dist.active:
            return
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.base.device)
        dist.all_reduce_([*self.per_layer.values(), self.base, count], "the evaluation all-reduce")
        self.count = int(count.item())

    def _buffers(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For logits ``z`` ``[m, vocab]``: ``p`` ``[m, vocab]``, ``q`` for one row block, and ``[4, m]`` results."""
        (m, vocab), rows = z.shape, block_rows(z)
        if self._p is None or self._p.shape[0] < m or self._p.shape[1] != vocab or self._q.shape[0] < rows:
            self._p = torch.empty(m, vocab, dtype=torch.float32, device=z.device)
            self._q = torch.empty(rows, vocab, dtype=torch.float32, device=z.device)
            self._out = torch.empty(len(METRICS), m, dtype=torch.float32, device=z.device)
        return self._p[:m], self._q, self._out[:, :m]

    def _add_chunk(self, resids: Tensor, labels: Int[Tensor, "m 1"], products, per_layer: dict, base: Tensor) -> None:
        z = products.target_logits(resids[-1])
        p_buf, q, out = self._buffers(z)
        top = z.argmax(-1, keepdim=True)
        target = distribution_(z, p_buf)
        p = target.p
        base[0] += -target.log_p.gather(-1, labels).sum().double()
        neg_entropy = target.neg_entropy.sum(dtype=torch.float64)   # sum p log p
        base[1] += -neg_entropy
        rows = block_rows(z)
        del z, target
        expectation = products.expectation_of_logits(p)   # sum p z without reading p again, when linear
        for name, lens in self.lenses.items():
            for layer in self.layers:
                z = products.logits(lens.transform(resids[layer], layer))
                p_dot_z = None
                if expectation is not None:
                    p_dot_z = torch.linalg.vecdot(products.last_input().float(), expectation[0]) + expectation[1]
                for r in range(0, z.shape[0], rows):  # row blocks that stay in cache: one read from memory
                    _score_block(z[r:r + rows], p[r:r + rows] if p_dot_z is None else p_dot_z[r:r + rows],
                                 labels[r:r + rows], top[r:r + rows], q, out[:, r:r + rows])
                sums = out.sum(1, dtype=torch.float64)                  # sum p lq, sum lq[label], sum q lq, top-1 hits
                per_layer[name][layer] += torch.stack([neg_entropy - sums[0], -sums[1], -sums[2], sums[3]])

    def metrics(self, model_name: str, hook_names: list[str], bytes_per_token: float) -> EvalMetrics:
        """Means over the positions seen, as the metrics dict."""
        baseline = {"ce": float(self.base[0] / self.count), "entropy": float(self.base[1] / self.count)}
        layers = []
        for layer in range(self.n_layers + 1):
            entry: dict = {"layer": layer, "hook": hook_names[layer]}
            for name in self.lenses:
                if layer == self.n_layers:
                    values = {"kl": 0.0, "ce": baseline["ce"], "entropy": baseline["entropy"], "top1": 1.0}
                else:
                    values = dict(zip(METRICS, (self.per_layer[name][layer] / self.count).tolist()))
                    values["kl"] = max(values["kl"], 0.0)
                values["bits_per_byte"] = _bpb(values, bytes_per_token)
                entry[name] = values
            layers.append(entry)
        out = {"model": model_name, "tokens": int(self.count), "bytes_per_token": float(bytes_per_token),
               "baseline": {**baseline, "bits_per_byte": _bpb(baseline, bytes_per_token)}, "layers": layers}
        if self.precision is not None:
            out["precision"] = self.precision
        return out


def _score_block(z: Float[Tensor, "r vocab"], p: Float[Tensor, "r vocab"] | Float[Tensor, " r"],
                 labels: Int[Tensor, "r 1"], top: Int[Tensor, "r 1"], q_buf: Float[Tensor, "rows vocab"],
                 out: Float[Tensor, "4 r"]) -> None:
    """Per position of a block of lens logits ``z``: ``sum p log q``, ``log q[label]``, ``sum q log q`` and
    whether the model's top-1 token ``top`` is a top-1 token of the lens, into ``out`` (nats; ``z`` is unchanged).
    ``p``: the model's distribution, or already ``sum p z`` per position (``[r]``).

    One softmax pass and at most two dot products: with ``lse = logsumexp(z) = max z - log max q``, every
    term is a sum over ``z`` minus ``lse`` (``sum p = sum q = 1``), so ``log q`` is never materialised."""
    q, lse = softmax_lse_(z, q_buf[:z.shape[0]])
    torch.sub(torch.linalg.vecdot(p, z) if p.ndim == 2 else p, lse, out=out[0])
    torch.sub(z.gather(-1, labels)[:, 0], lse, out=out[1])
    torch.sub(torch.linalg.vecdot(q, z), lse, out=out[2])
    torch.eq(z.gather(-1, top), z.amax(-1, keepdim=True), out=out[3, :, None])

