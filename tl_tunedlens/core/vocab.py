"""The vocabulary engine: every ``[m, d_vocab]`` computation that training and evaluation share.

Two layers of it, written once here:

- **The products** (:class:`FusedProducts`, :class:`AutogradProducts`, :func:`vocab_products`): the
  model's distribution ``target_logits(h)``, a lens's ``logits(h)`` and the ``backward(grad)`` of a
  gradient with respect to those logits into the translators' ``.grad``. The fused kind, for a plain
  frozen ``x @ W_U + b_U`` without soft-cap (:attr:`~tl_tunedlens.core.unembed.Unembed.fusable`),
  runs autograd only up to the ``[m, d_model]`` output of ``ln_final`` and the two vocabulary products
  (``x W_U + b_U`` and ``g W_U^T``) as explicit ``addmm``/``mm`` calls into ``[m, d_vocab]`` buffers
  allocated once and reused (fresh 100 MB blocks per layer cost as much in page faults as the
  arithmetic). The autograd kind calls the model's modules (soft-caps, custom unembeddings).
  ``matmul_dtype`` (e.g. ``torch.bfloat16``) runs the lens's two products in that dtype from a copy
  of ``W_U`` that the products object owns (it goes when the object goes); the model's own
  distribution always uses the model's precision, and logits come back as fp32.
- **The softmax side**, in cache-sized row blocks (:func:`block_rows`, ``BLOCK_BYTES``):
  :func:`distribution_` turns the model's logits into ``p`` and ``sum p log p`` once per chunk, and
  :func:`softmax_lse_` gives a block's softmax ``q`` and its log-sum-exp ``lse = max z - log max q`` in
  one pass, so a loss or metric needs no ``log q`` (every term is a sum over ``z`` minus ``lse``).

Training (:mod:`tl_tunedlens.training.loss`) adds the gradient and the divergence watch on top;
evaluation (:mod:`tl_tunedlens.analysis.evaluate`) adds the metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .unembed import Unembed

#: the lens's vocabulary-product precisions a user may ask for (``matmul_dtype``)
MATMUL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: positions whose ``[chunk, d_vocab]`` logits are computed at once (bounds memory); training's and evaluation's default
CHUNK_TOKENS = 512
#: bytes of a ``[rows, d_vocab]`` fp32 block of logits that the softmax-side passes take at once on a
#: CPU (it stays in cache while it is read several times: :func:`block_rows`)
BLOCK_BYTES = 4 * 2**20
#: "auto" considers bf16 only for unembeddings at least this large (d_model x d_vocab); smaller
#: products are too quick to time and gain nothing, so they keep the model's precision
AUTO_MIN_WEIGHTS = 1 << 22
#: "auto" picks bf16 when its measured product is at least this many times faster
AUTO_MIN_SPEEDUP = 1.25
#: "auto" times products against this many vocabulary columns (a fraction of a second either way)
AUTO_PROBE_VOCAB = 8192


# --- the softmax side -----------------------------------------------------------------------------
def log_softmax_(z: Tensor) -> Tensor:
    """``log_softmax(z, -1)`` written over ``z`` on CPU (the kernel finishes each row's max and sum
    before writing it; saves a ``[chunk, d_vocab]`` buffer); out of place elsewhere."""
    if z.device.type == "cpu":
        return torch._log_softmax(z, -1, False, out=z)
    return z.log_softmax(-1)


def softmax_(z: Tensor, out: Tensor | None = None) -> Tensor:
    """``softmax(z, -1)`` written into ``out`` (default: over ``z`` itself, which the CPU kernel allows
    as it finishes each row's max before writing it); out of place, then copied, elsewhere."""
    out = z if out is None else out
    if z.device.type == "cpu":
        return torch._softmax(z, -1, False, out=out)
    return out.copy_(z.softmax(-1))


def block_rows(z: Float[Tensor, "m d_vocab"]) -> int:
    """Rows of ``z`` that the softmax-side passes take at once: on a CPU a ``[rows, d_vocab]`` fp32 block
    of ``BLOCK_BYTES`` that stays in cache while it is read several times; elsewhere all of them."""
    if z.device.type != "cpu":
        return max(1, z.shape[0])
    return max(1, BLOCK_BYTES // (4 * z.shape[-1]))


def softmax_lse_(z: Float[Tensor, "r d_vocab"], out: Tensor | None = None
                 ) -> tuple[Float[Tensor, "r d_vocab"], Float[Tensor, " r"]]:
    """``(q, lse)``: the softmax of a block of logits (into ``out``, default over ``z``) and its
    log-sum-exp, from one pass: ``lse = max z - log max q``, as ``max q = 1 / sum exp(z - max z)``."""
    z_max = z.amax(-1)
    q = softmax_(z, out)
    return q, z_max - q.amax(-1).log_()


@dataclass
class BlockStatistics:
    """What one pass over a block of lens logits ``z`` ``[r, d_vocab]`` gives (:func:`block_statistics_`);
    every per-cell statistic is a difference of these (``log q = z - lse``)."""

    lse: Float[Tensor, " r"]
    q_dot_z: Float[Tensor, " r"]                 # sum_v q z: entropy = lse - q_dot_z
    top_logits: Float[Tensor, "r k"]
    top_indices: Int[Tensor, "r k"]
    picked: Float[Tensor, "r w"]                 # z at the ids asked for (targets, watched tokens)
    ranks: Int[Tensor, "r w"]                    # 1 + the number of tokens with a larger logit
    p_dot_z: Float[Tensor, " r"] | None = None   # sum_v p z for a given distribution p
    q_dot_other: Float[Tensor, " r"] | None = None  # sum_v q z' for given other logits z'


def block_statistics_(z: Float[Tensor, "r d_vocab"], q_buf: Float[Tensor, "rows d_vocab"], ids: Int[Tensor, "r w"],
                      top_k: int, *, p: Float[Tensor, "r d_vocab"] | None = None,
                      other: Float[Tensor, "r d_vocab"] | None = None) -> BlockStatistics:
    """Per row of a cache-sized block of logits ``z`` (unchanged; ``q`` goes into ``q_buf``): one softmax
    pass, then the top-``top_k``, the logits and ranks at ``ids``, and dot products of ``q`` with ``z``
    (and with ``other`` logits) and of ``p`` with ``z``, all while the block is in cache; ``log q`` is
    never written. The explorer's cells and the evaluation's sums are differences of these."""
    q, lse = softmax_lse_(z, q_buf[:z.shape[0]])
    top_logits, top_indices = z.topk(top_k, dim=-1)
    picked = z.gather(-1, ids)
    ranks = torch.stack([(z > picked[:, j:j + 1]).sum(-1, dtype=torch.int32) for j in range(ids.shape[1])], -1).long() + 1
    return BlockStatistics(lse, torch.linalg.vecdot(q, z), top_logits, top_indices, picked, ranks,
                           None if p is None else torch.linalg.vecdot(p, z),
                           None if other is None else torch.linalg.vecdot(q, other))


@dataclass
class Distribution:
    """The model's next-token distribution over a chunk, fp32: ``p`` ``[m, d_vocab]`` (in the caller's
    buffer), ``log_p`` (written over the logits it came from) and ``neg_entropy = sum_v p log p`` ``[m]`` (nats)."""

    p: Float[Tensor, "m d_vocab"]
    log_p: Float[Tensor, "m d_vocab"]
    neg_entropy: Float[Tensor, " m"]


def distribution_(z: Float[Tensor, "m d_vocab"], out: Float[Tensor, "n d_vocab"]) -> Distribution:
    """The model's distribution from its fp32 logits ``z`` (overwritten with ``log p``); ``p`` goes into
    the first ``m`` rows of ``out``. Once per chunk, shared by every lens and layer."""
    log_p = log_softmax_(z)
    p = torch.exp(log_p, out=out[:z.shape[0]])
    return Distribution(p, log_p, torch.linalg.vecdot(p, log_p))


# --- the products --------------------------------------------------------------------------------
class FusedProducts:
    """Explicit vocabulary matmuls into reused buffers; autograd only up to ``ln_final``."""

    def __init__(self, unembed: Unembed, matmul_dtype: torch.dtype | None = None):
        weights = unembed.linear_weights()
        if weights is None or unembed.softcapped:
            raise TypeError("FusedProducts needs a plain linear unembedding without soft-cap (Unembed.fusable)")
        self.unembed = unembed
        self.w_u, self.b_u = weights                    # [d_model d_vocab], [d_vocab]: the model's own
        low = matmul_dtype if matmul_dtype not in (None, self.w_u.dtype) else None
        self.matmul_dtype = low or self.w_u.dtype       # of the lens products; the target's is the model's
        self.is_exact = low is None
        if low is None:
            self.forward_w, self.forward_b, self.backward_w = self.w_u, self.b_u, self.w_u.T
        else:   # this object's own low-precision copy, [d_vocab d_model]: read transposed by both products
            w_t = self.w_u.to(low).T.contiguous()
            self.forward_w, self.forward_b, self.backward_w = w_t.T, self.b_u.to(low), w_t
        self._buffers: dict[str, Tensor] = {}
        self._x: Tensor | None = None

    def _buffer(self, name: str, m: int, dtype: torch.dtype) -> Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < m:
            self._buffers.pop(name, None)
            buf = self._buffers[name] = torch.empty(m, self.w_u.shape[1], dtype=dtype, device=self.w_u.device)
        return buf[:m]

    def _product(self, x: Tensor, w: Tensor, b: Tensor, out: Tensor | None = None) -> Float[Tensor, "m d_vocab"]:
        """``x @ w + b`` computed in ``w``'s dtype, returned in ``out`` (default: the reused fp32 logits buffer)."""
        m = x.shape[0]
        z = self._buffer(str(torch.float32), m, torch.float32) if out is None else out[:m]
        if w.dtype == torch.float32:
            return torch.addmm(b, x.float(), w, out=z)
        return z.copy_(torch.addmm(b, x.to(w.dtype), w, out=self._buffer(str(w.dtype), m, w.dtype)))

    @torch.no_grad()
    def target_logits(self, h: Float[Tensor, "m d_model"]) -> Float[Tensor, "m d_vocab"]:
        """fp32 logits of the model's own final residual ``h``, in the model's precision (no gradient)."""
        return self._product(self.unembed.normalize(h), self.w_u, self.b_u)

    def logits(self, h: Float[Tensor, "m d_model"], out: Tensor | None = None) -> Float[Tensor, "m d_vocab"]:
        """fp32 logits of translated residuals ``h`` (into ``out``, default the reused buffer), keeping the
        graph up to ``ln_final``."""
        self._x = self.unembed.normalize(h)            # autograd from here down to the lens
        with torch.no_grad():
            return self._product(self._x.detach(), self.forward_w, self.forward_b, out)

    @torch.no_grad()
    def expectation_of_logits(self, p: Float[Tensor, "m d_vocab"]
                              ) -> tuple[Float[Tensor, "m d_model"], Float[Tensor, " m"]] | None:
        """``(p W_U^T, p . b_U)`` for fp32 distributions ``p`` over the vocabulary (``None`` unless the
        lens products are exact fp32): then ``sum_v p_v z_v`` of the logits ``z = x W_U + b_U`` of any
        later :meth:`logits` call is ``x . (p W_U^T) + p . b_U`` (``x``: :meth:`last_input`), with no
        pass over the vocabulary. One product of the input-gradient shape, shared by every layer."""
        if not self.is_exact or self.w_u.dtype != torch.float32:
            return None
        return torch.mm(p, self.w_u.T), torch.mv(p, self.b_u)

    def last_input(self) -> Float[Tensor, "m d_model"]:
        """The normalised input ``x`` (``ln_final`` of the translated residual) of the last :meth:`logits` call."""
        return self._x.detach()

    def backward(self, grad: Float[Tensor, "m d_vocab"]) -> None:
        """Push ``grad`` (fp32 ``[m, d_vocab]``) back: ``grad @ W_U^T`` explicitly, then autograd through ``ln_final``."""
        x, self._x = self._x, None
        with torch.no_grad():
            dtype = self.backward_w.dtype
            if grad.dtype != dtype:
                grad = self._buffer(str(dtype), grad.shape[0], dtype).copy_(grad)
            grad_x = torch.mm(grad, self.backward_w)                      # [m, d_model]
        x.backward(grad_x.to(x.dtype))


class AutogradProducts:
    """The model's own ``ln_final`` + unembedding (+ soft-cap) under autograd."""

    def __init__(self, unembed: Unembed, matmul_dtype: torch.dtype | None = None):
        self.unembed = unembed
        self.matmul_dtype = matmul_dtype or unembed.dtype
        self.is_exact = self.matmul_dtype == unembed.dtype
        self._z: Tensor | None = None

    @torch.no_grad()
    def target_logits(self, h: Float[Tensor, "m d_model"]) -> Float[Tensor, "m d_vocab"]:
        """fp32 logits of the model's own final residual ``h`` (no gradient)."""
        return self.unembed(h).float()

    def logits(self, h: Float[Tensor, "m d_model"], out: Tensor | None = None) -> Float[Tensor, "m d_vocab"]:
        """fp32 logits of translated residuals ``h`` (copied into ``out`` if given), keeping the autograd
        graph for :meth:`backward`."""
        self._z = self.unembed(h, self.matmul_dtype)
        z = self._z.detach().float()                   # fp32 logits: no copy when they already are
        return z if out is None else out[:z.shape[0]].copy_(z)

    def expectation_of_logits(self, p: Tensor) -> None:
        """Not available: the logits need not be linear in the input (a soft-cap, a custom module)."""
        return None

    def backward(self, grad: Float[Tensor, "m d_vocab"]) -> None:
        """Push ``grad`` (fp32 ``[m, d_vocab]``) back through the model's modules into the lens."""
        z, self._z = self._z, None
        z.backward(grad.to(z.dtype))


VocabProducts = FusedProducts | AutogradProducts


def vocab_products(unembed: Unembed, matmul_dtype: torch.dtype | None = None) -> VocabProducts:
    """The fused products when the unembedding allows it (:attr:`~tl_tunedlens.core.unembed.Unembed.fusable`), else the autograd ones."""
    if matmul_dtype == unembed.dtype:
        matmul_dtype = None
    return (FusedProducts if unembed.fusable else AutogradProducts)(unembed, matmul_dtype)


def _timed_product(x: Tensor, w: Tensor, reps: int = 3) -> float:
    """Best wall time of ``x @ w`` over ``reps`` runs (synchronised on CUDA)."""
    best = float("inf")
    for _ in range(reps):
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        t0 = time.perf_counter()
        torch.mm(x, w)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        best = min(best, time.perf_counter() - t0)
    return best


@torch.no_grad()
def resolve_matmul_dtype(unembed: Unembed, requested: str, rows: int = 512) -> tuple[torch.dtype, str]:
    """The dtype of the lens's vocabulary products for ``requested`` (a key of ``MATMUL_DTYPES`` or
    ``"auto"``), and why. ``"auto"`` times a ``[rows, d_model] x [d_model, AUTO_PROBE_VOCAB]`` product in the
    model's precision and in bf16 on this device and takes bf16 only when it is at least
    ``AUTO_MIN_SPEEDUP`` times faster (a CPU without bf16 instructions runs it several times slower)."""
    if requested != "auto":
        return MATMUL_DTYPES[requested], "requested"
    weights = unembed.linear_weights()
    if weights is None or unembed.dtype != torch.float32 or weights[0].numel() < AUTO_MIN_WEIGHTS:
        return unembed.dtype, "auto: the model's precision (bf16 not considered for this unembedding)"
    w = weights[0][:, :AUTO_PROBE_VOCAB]             # a slice of the vocabulary: the ratio is what counts
    x = torch.randn(rows, w.shape[0], device=w.device, generator=None)
    fp32 = _timed_product(x, w)
    # bf16 in the layout training uses (a [d_vocab, d_model] copy, read transposed: see FusedProducts); CPU
    # kernels for the other layout can be orders of magnitude slower, which would only slow the probe
    low = w.T.contiguous().to(torch.bfloat16)
    bf16 = _timed_product(x.to(torch.bfloat16), low.T)
    del low
    speedup = fp32 / bf16
    choice = torch.bfloat16 if speedup >= AUTO_MIN_SPEEDUP else torch.float32
    return choice, f"auto: bf16 product {speedup:.2f}x the speed of float32 on {w.device.type}"
