"""The loss of a tuned lens and its gradient, one ``[chunk, d_vocab]`` block at a time.

Loss per layer ``l``: forward KL from the model's final distribution ``p`` to the lens's ``q_l``,
``sum_v p (log p - log q_l)`` in nats (or, with labels, cross-entropy against the next token).
The gradient w.r.t. the lens logits is written down analytically -- ``softmax(z) - p`` for KL,
``softmax(z) - onehot`` for CE -- and handed to a decoder (:mod:`.decoder`) that pushes it into the
translators' ``.grad``: no autograd graph over the vocabulary-sized softmax is ever built, and at
most one block of logits plus the target is alive at a time. The target, the softmax, the loss and
its gradient are fp32 whatever the decoder's matmul precision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import TrainingDivergedError
from .decoder import Decoder, make_decoder

if TYPE_CHECKING:
    from ..lens import TunedLens


def diverged(what: str, layer: int, step: int | None) -> TrainingDivergedError:
    """The one divergence error: ``what`` became non-finite at ``layer`` (and ``step``)."""
    where = f" at step {step}" if step is not None else ""
    return TrainingDivergedError(f"{what} became non-finite at layer {layer}{where}: lower --lr or use "
                                 "--optimizer adam; the last checkpoint is intact")


def log_softmax_(z: Tensor) -> Tensor:
    """``log_softmax(z, -1)`` written over ``z`` on CPU (the kernel finishes each row's max and sum
    before writing it; saves a ``[chunk, d_vocab]`` buffer); out of place elsewhere."""
    if z.device.type == "cpu":
        return torch._log_softmax(z, -1, False, out=z)
    return z.log_softmax(-1)


def accumulate_lens_grads(lens: "TunedLens", resids: Float[Tensor, "layer n d_model"], layers: list[int], *,
                          labels: Int[Tensor, " n"] | None = None, scale: float = 1.0, chunk_tokens: int = 512,
                          step: int | None = None, matmul_dtype: torch.dtype | None = None,
                          decoder: Decoder | None = None) -> Float[Tensor, " layer"]:
    """Add ``scale * d(loss)/d(params)`` to the translators' ``.grad``; return per-layer loss sums.

    ``resids[i]``: residual at lens layer ``i`` for ``n`` tokens (all ``n_layers + 1`` layers).
    ``labels``: next-token ids for cross-entropy; ``None`` for KL to the final layer's output.
    ``matmul_dtype``: dtype of the lens's vocabulary matmuls, e.g. ``torch.bfloat16`` (``None``: the
    model's); ``decoder``: reuse one (and its buffers) across calls instead.
    Returns ``[len(layers)]`` loss *sums* over the ``n`` tokens (nats, fp64, on the CPU)."""
    decoder = decoder or make_decoder(lens.unembed, matmul_dtype)
    n, device = resids.shape[1], resids.device
    s = scale if scale != 0 else 1.0
    sums = torch.zeros(len(layers), dtype=torch.float64, device=device)
    target_buf = None
    for start in range(0, n, chunk_tokens):
        sl = slice(start, start + chunk_tokens)
        neg_target = neg_entropy = lab = None
        with torch.no_grad():
            if labels is None:  # -s * p and sum p log p, in the model's own precision
                logp = log_softmax_(decoder.target_logits(resids[-1, sl]))
                if target_buf is None:
                    target_buf = torch.empty(min(chunk_tokens, n), logp.shape[-1], dtype=torch.float32, device=device)
                neg_target = torch.exp(logp, out=target_buf[:logp.shape[0]])
                neg_entropy = torch.linalg.vecdot(neg_target, logp)
                neg_target.mul_(-s)
                del logp
            else:
                lab = labels[sl].to(device)[:, None]
        for j, layer in enumerate(layers):
            lq = log_softmax_(decoder.logits(lens.transform(resids[layer, sl], layer)))
            with torch.no_grad():
                if labels is None:
                    loss = neg_entropy + torch.linalg.vecdot(neg_target, lq) / s   # KL(p || q) per token
                else:
                    loss = -lq.gather(-1, lab).squeeze(-1)
                total = loss.double().sum()
                if not torch.isfinite(total):
                    raise diverged("the loss", layer, step)
                sums[j] += total
                grad = lq.exp_()                                                # q, in place
                if scale == 0:
                    grad.zero_()
                elif labels is None:
                    torch.add(neg_target, grad, alpha=s, out=grad)              # s * (q - p)
                else:
                    grad.mul_(scale).scatter_add_(-1, lab, torch.full_like(loss[:, None], -scale))
            decoder.backward(grad)
    return sums.cpu()
