"""The loss of a tuned lens and its gradient, one ``[chunk, d_vocab]`` block at a time.

Loss per layer ``l``: forward KL from the model's final distribution ``p`` to the lens's ``q_l``,
``sum_v p (log p - log q_l)`` in nats (or, with labels, cross-entropy against the next token).
The gradient w.r.t. the lens logits is written down analytically -- ``softmax(z) - p`` for KL,
``softmax(z) - onehot`` for CE -- and handed to a decoder (:mod:`.decoder`) that pushes it into the
translators' ``.grad``: no autograd graph over the vocabulary-sized softmax is ever built, and at
most one block of logits plus the target is alive at a time. The target, the softmax, the loss and
its gradient are fp32 whatever the decoder's matmul precision.

Divergence (:class:`~tl_tunedlens.training.loss.DivergenceWatch`): a non-finite loss or weight stops training at once; so does a
layer whose mean loss stays above ``DIVERGENCE_FACTOR`` times its first step's loss (and at least
``DIVERGENCE_MARGIN`` nats above it, so that tiny losses may fluctuate) for
``DIVERGENCE_STEPS`` steps in a row. Both raise :func:`~tl_tunedlens.training.loss.diverged`'s error, naming the layer and step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import TrainingDivergedError
from .decoder import Decoder, make_decoder

if TYPE_CHECKING:
    from ..lens import TunedLens


#: bytes of a ``[rows, d_vocab]`` fp32 block of logits that the softmax-side passes take at once on a
#: CPU (it stays in cache while it is read several times: :func:`block_rows`)
BLOCK_BYTES = 4 * 2**20
#: a layer's loss "rises" when above this many times its first step's loss ...
DIVERGENCE_FACTOR = 4.0
#: ... and at least this many nats above it ...
DIVERGENCE_MARGIN = 1.0
#: ... and training stops when it has risen for this many steps in a row
DIVERGENCE_STEPS = 3


def diverged(what: str, layer: int, step: int | None, how: str = "became non-finite") -> TrainingDivergedError:
    """The one divergence error: ``what`` ``how`` (default: became non-finite) at ``layer`` (and ``step``)."""
    where = f" at step {step}" if step is not None else ""
    return TrainingDivergedError(f"{what} at layer {layer}{where} {how}: lower --lr or use --optimizer adam; "
                                 "the checkpoints written before it are intact")


@dataclass
class DivergenceWatch:
    """Stops a run whose loss rises well above where it started (see the module doc). ``start``: each
    trained layer's mean loss (nats) at the first step watched; ``rising``: steps in a row above the bar."""

    start: list[float] | None = None
    rising: list[int] = field(default_factory=list)

    def update(self, layer_losses: list[float], layers: list[int], step: int) -> None:
        """Record one step's per-layer mean losses; raise :func:`~tl_tunedlens.training.loss.diverged`'s error on a sustained rise."""
        if self.start is None or len(self.start) != len(layer_losses):
            self.start, self.rising = list(layer_losses), [0] * len(layer_losses)
            return
        for j, (loss, first) in enumerate(zip(layer_losses, self.start)):
            bar = max(DIVERGENCE_FACTOR * first, first + DIVERGENCE_MARGIN)
            self.rising[j] = self.rising[j] + 1 if loss > bar else 0
            if self.rising[j] >= DIVERGENCE_STEPS:
                raise diverged("the loss", layers[j], step, how=(
                    f"rose to {loss:.4g} nats, {loss / max(first, 1e-12):.1f}x its first step's {first:.4g}, for "
                    f"{DIVERGENCE_STEPS} steps in a row"))

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the watch."""
        return {"start": self.start, "rising": self.rising}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Continue from :meth:`~tl_tunedlens.training.loss.DivergenceWatch.state_dict` (``None``, a checkpoint from before the watch: start afresh)."""
        state = state or {}
        self.start, self.rising = state.get("start"), list(state.get("rising") or [])


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


def loss_and_grad_(z: Float[Tensor, "m d_vocab"], *, neg_target: Float[Tensor, "m d_vocab"] | None = None,
                   neg_entropy: Float[Tensor, " m"] | None = None, labels: Int[Tensor, "m 1"] | None = None,
                   s: float = 1.0, scale: float = 1.0) -> Float[Tensor, " m"]:
    """Per-token loss (nats) of fp32 lens logits ``z``, and ``z`` overwritten with ``scale * d loss / d z``.

    KL (``neg_target = -s p``, ``neg_entropy = sum p log p``): ``sum p log p - sum p log q``, gradient
    ``scale (q - p)``; CE (``labels``): ``-log q[label]``, gradient ``scale (q - onehot)``. Row blocks of
    :func:`block_rows`, each read once from memory: its max, ``sum p z`` (or ``z[label]``), then the
    softmax in place; with ``lse = max z - log max q`` no ``log q`` is ever materialised."""
    loss = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
    rows = block_rows(z)
    for r in range(0, z.shape[0], rows):
        block, sl = z[r:r + rows], slice(r, r + rows)
        z_max = block.amax(-1)
        if labels is None:
            cross = torch.linalg.vecdot(neg_target[sl], block)          # -s sum p z
        else:
            picked = block.gather(-1, labels[sl])[:, 0]
        q = softmax_(block)
        lse = z_max - q.amax(-1).log_()                                 # max q = 1 / sum exp(z - max z)
        if labels is None:
            torch.add(neg_entropy[sl], cross.div_(s).add_(lse), out=loss[sl])
        else:
            torch.sub(lse, picked, out=loss[sl])
        if scale == 0:
            q.zero_()
        elif labels is None:
            torch.add(neg_target[sl], q, alpha=s, out=q)                # s (q - p)
        else:
            q.mul_(scale).scatter_add_(-1, labels[sl], torch.full_like(picked[:, None], -scale))
    return loss


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
            z = decoder.logits(lens.transform(resids[layer, sl], layer))
            with torch.no_grad():                                       # z becomes d loss / d z
                loss = loss_and_grad_(z, neg_target=neg_target, neg_entropy=neg_entropy, labels=lab, s=s, scale=scale)
                total = loss.double().sum()
                if not torch.isfinite(total):
                    raise diverged("the loss", layer, step)
                sums[j] += total
            decoder.backward(z)
    return sums.cpu()
