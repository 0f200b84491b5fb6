"""The vocabulary side of a training step: lens logits forward, the gradient w.r.t. them backward.

The trainer's chunk loop (:mod:`.loss`) computes the loss and the gradient w.r.t. the logits
(``softmax - p``) itself, so a decoder only has to offer three things, for ``m`` tokens at a time:

- ``target_logits(h)``: fp32 logits of the model's own final residual ``h`` (no gradient);
- ``logits(h)``: fp32 logits of a translated residual ``h`` (which carries the lens's autograd graph);
- ``backward(grad)``: push ``d loss / d logits`` (fp32 ``[m, d_vocab]``) back into the lens's ``.grad``.

Two implementations:

- :class:`FusedDecoder`, when the unembedding is a plain frozen ``x @ W_U + b_U`` without soft-cap
  (:attr:`~tl_tunedlens.core.unembed.Unembed.fusable`): autograd runs only up to the ``[m, d_model]``
  output of ``ln_final``; the two vocabulary products (logits ``x W_U + b_U`` and the gradient
  ``g W_U^T``) are explicit ``addmm``/``mm`` calls into ``[m, d_vocab]`` buffers allocated once and
  reused for every layer, chunk and micro-batch (fresh 100 MB blocks per layer cost as much in page
  faults as the arithmetic). The model-precision product reads the model's own ``W_U`` (no copy).
- :class:`AutogradDecoder` for anything else (soft-capped or custom unembeddings): the model's modules
  are called with autograd and ``logits.backward(grad)``.

``matmul_dtype`` (e.g. ``torch.bfloat16``) runs the lens's two vocabulary products in that dtype;
the target always uses the model's precision, and logits come back as fp32 either way.
"""

from __future__ import annotations

import time

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.unembed import Unembed
from .config import MATMUL_DTYPES

#: "auto" considers bf16 only for unembeddings at least this large (d_model x d_vocab); smaller
#: products are too quick to time and gain nothing, so they keep the model's precision
AUTO_MIN_WEIGHTS = 1 << 22
#: "auto" picks bf16 when its measured product is at least this many times faster
AUTO_MIN_SPEEDUP = 1.25
#: "auto" times products against this many vocabulary columns (a fraction of a second either way)
AUTO_PROBE_VOCAB = 8192


class FusedDecoder:
    """Explicit vocabulary matmuls into reused buffers; autograd only up to ``ln_final``."""

    def __init__(self, unembed: Unembed, matmul_dtype: torch.dtype | None = None):
        weights = unembed.linear_weights()
        if weights is None or unembed.softcapped:
            raise TypeError("FusedDecoder needs a plain linear unembedding without soft-cap (Unembed.fusable)")
        self.unembed = unembed
        self.w_u, self.b_u = weights                    # [d_model d_vocab], [d_vocab]: the model's own
        low = matmul_dtype if matmul_dtype not in (None, self.w_u.dtype) else None
        self.matmul_dtype = low or self.w_u.dtype       # of the lens products; the target's is the model's
        self.is_exact = low is None
        if low is None:
            self.forward_w, self.forward_b, self.backward_w = self.w_u, self.b_u, self.w_u.T
        else:
            w_t, b_low = unembed.transposed_weights(low)  # a training-only copy, see release_training_cache
            self.forward_w, self.forward_b, self.backward_w = w_t.T, b_low, w_t
        self._buffers: dict[str, Tensor] = {}
        self._x: Tensor | None = None

    def _buffer(self, name: str, m: int, dtype: torch.dtype) -> Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < m:
            self._buffers.pop(name, None)
            buf = self._buffers[name] = torch.empty(m, self.w_u.shape[1], dtype=dtype, device=self.w_u.device)
        return buf[:m]

    def _product(self, x: Tensor, w: Tensor, b: Tensor) -> Float[Tensor, "m d_vocab"]:
        """``x @ w + b`` computed in ``w``'s dtype, returned in the reused fp32 logits buffer."""
        m = x.shape[0]
        z = self._buffer(str(torch.float32), m, torch.float32)
        if w.dtype == torch.float32:
            return torch.addmm(b, x.float(), w, out=z)
        return z.copy_(torch.addmm(b, x.to(w.dtype), w, out=self._buffer(str(w.dtype), m, w.dtype)))

    @torch.no_grad()
    def target_logits(self, h: Float[Tensor, "m d_model"]) -> Float[Tensor, "m d_vocab"]:
        """fp32 logits of the model's own final residual ``h``, in the model's precision (no gradient)."""
        return self._product(self.unembed.normalize(h), self.w_u, self.b_u)

    def logits(self, h: Float[Tensor, "m d_model"]) -> Float[Tensor, "m d_vocab"]:
        """fp32 logits of translated residuals ``h`` (into the reused buffer), keeping the graph up to ``ln_final``."""
        self._x = self.unembed.normalize(h)            # autograd from here down to the lens
        with torch.no_grad():
            return self._product(self._x.detach(), self.forward_w, self.forward_b)

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


class AutogradDecoder:
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

    def logits(self, h: Float[Tensor, "m d_model"]) -> Float[Tensor, "m d_vocab"]:
        """fp32 logits of translated residuals ``h``, keeping the autograd graph for :meth:`backward`."""
        self._z = self.unembed(h, self.matmul_dtype)
        return self._z.detach().float()                # fp32 logits: no copy when they already are

    def expectation_of_logits(self, p: Tensor) -> None:
        """Not available: the logits need not be linear in the input (a soft-cap, a custom module)."""
        return None

    def backward(self, grad: Float[Tensor, "m d_vocab"]) -> None:
        """Push ``grad`` (fp32 ``[m, d_vocab]``) back through the model's modules into the lens."""
        z, self._z = self._z, None
        z.backward(grad.to(z.dtype))


Decoder = FusedDecoder | AutogradDecoder


def make_decoder(unembed: Unembed, matmul_dtype: torch.dtype | None = None) -> Decoder:
    """The fused decoder when the unembedding allows it (:attr:`~tl_tunedlens.core.unembed.Unembed.fusable`), else the autograd one."""
    if matmul_dtype == unembed.dtype:
        matmul_dtype = None
    return (FusedDecoder if unembed.fusable else AutogradDecoder)(unembed, matmul_dtype)


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
    # bf16 in the layout training uses (a [d_vocab, d_model] copy, read transposed: see FusedDecoder); CPU
    # kernels for the other layout can be orders of magnitude slower, which would only slow the probe
    low = w.T.contiguous().to(torch.bfloat16)
    bf16 = _timed_product(x.to(torch.bfloat16), low.T)
    del low
    speedup = fp32 / bf16
    choice = torch.bfloat16 if speedup >= AUTO_MIN_SPEEDUP else torch.float32
    return choice, f"auto: bf16 product {speedup:.2f}x the speed of float32 on {w.device.type}"
