"""The loss of a tuned lens and its gradient, one ``[chunk, d_vocab]`` block at a time.

Loss per layer ``l``: forward KL from the model's final distribution ``p`` to the lens's ``q_l``,
``sum_v p (log p - log q_l)`` in nats (or, with labels, cross-entropy against the next token).
The gradient w.r.t. the lens logits is written down analytically -- ``softmax(z) - p`` for KL,
``softmax(z) - onehot`` for CE -- and handed to the vocabulary products (:mod:`tl_tunedlens.core.vocab`),
which push it into the translators' ``.grad``: no autograd graph over the vocabulary-sized softmax is
ever built, and at most one block of logits plus the target is alive at a time. The target, the
softmax, the loss and its gradient are fp32 whatever the products' matmul precision; the softmax-side
passes (the model's distribution, the block softmax and its log-sum-exp) are the vocabulary engine's.

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

from ..core.vocab import CHUNK_TOKENS, VocabProducts, block_rows, distribution_, softmax_lse_, vocab_products
from ..errors import TrainingDivergedError

if TYPE_CHECKING:
    from ..lens import TunedLens


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


def loss_and_grad_(z: Float[Tensor, "m d_vocab"], *, neg_target: Float[Tensor, "m d_vocab"] | None = None,
                   neg_entropy: Float[Tensor, " m"] | None = None, labels: Int[Tensor, "m 1"] | None = None,
                   target_scale: float = 1.0, scale: float = 1.0) -> Float[Tensor, " m"]:
    """Per-token loss (nats) of fp32 lens logits ``z``, and ``z`` overwritten with ``scale * d loss / d z``.

    KL (``neg_target = -target_scale * p``, ``neg_entropy = sum p log p``; ``target_scale`` is ``scale``,
    or 1 when ``scale`` is 0): ``sum p log p - sum p log q``, gradient ``scale (q - p)``; CE (``labels``):
    ``-log q[label]``, gradient ``scale (q - onehot)``. Row blocks of :func:`~tl_tunedlens.core.vocab.block_rows`,
    each read once from memory: ``sum p z`` (or ``z[label]``), then the softmax and its log-sum-exp in
    place (:func:`~tl_tunedlens.core.vocab.softmax_lse_`), so no ``log q`` is ever materialised."""
    loss = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
    rows = block_rows(z)
    for r in range(0, z.shape[0], rows):
        block, sl = z[r:r + rows], slice(r, r + rows)
        if labels is None:
            cross = torch.linalg.vecdot(neg_target[sl], block)          # -target_scale sum p z
        else:
            picked = block.gather(-1, labels[sl])[:, 0]
        q, lse = softmax_lse_(block)
        if labels is None:
            torch.add(neg_entropy[sl], cross.div_(target_scale).add_(lse), out=loss[sl])
        else:
            torch.sub(lse, picked, out=loss[sl])
        if scale == 0:
            q.zero_()
        elif labels is None:
            torch.add(neg_target[sl], q, alpha=target_scale, out=q)     # target_scale (q - p)
        else:
            q.mul_(scale).scatter_add_(-1, labels[sl], torch.full_like(picked[:, None], -scale))
    return loss


def accumulate_lens_grads(lens: "TunedLens", resids: Float[Tensor, "layer n d_model"], layers: list[int], *,
                          labels: Int[Tensor, " n"] | None = None, scale: float = 1.0, chunk_tokens: int = CHUNK_TOKENS,
                          step: int | None = None, matmul_dtype: torch.dtype | None = None,
                          products: VocabProducts | None = None, backward: bool = True) -> Float[Tensor, " layer"]:
    """Add ``scale * d(loss)/d(params)`` to the translators' ``.grad``; return per-layer loss sums.
    ``backward=False``: the loss sums alone (no gradient, half the work; e.g. a validation loss).

    ``resids[i]``: residual at lens layer ``i`` for ``n`` tokens (all ``n_layers + 1`` layers).
    ``labels``: next-token ids for cross-entropy; ``None`` for KL to the final layer's output.
    ``matmul_dtype``: dtype of the lens's vocabulary matmuls, e.g. ``torch.bfloat16`` (``None``: the
    model's); ``products``: reuse one :func:`~tl_tunedlens.core.vocab.vocab_products` (and its buffers)
    across calls instead. Returns ``[len(layers)]`` loss *sums* over the ``n`` tokens (nats, fp64, on the CPU)."""
    products = products or vocab_products(lens.unembed, matmul_dtype)
    n, device = resids.shape[1], resids.device
    target_scale = scale if scale != 0 else 1.0
    sums = torch.zeros(len(layers), dtype=torch.float64, device=device)
    target_buf = None
    for start in range(0, n, chunk_tokens):
        sl = slice(start, start + chunk_tokens)
        neg_target = neg_entropy = lab = None
        with torch.no_grad():
            if labels is None:  # -target_scale * p and sum p log p, in the model's own precision
                z = products.target_logits(resids[-1, sl])
                if target_buf is None:
                    target_buf = torch.empty(min(chunk_tokens, n), z.shape[-1], dtype=torch.float32, device=device)
                target = distribution_(z, target_buf)
                neg_target, neg_entropy = target.p.mul_(-target_scale), target.neg_entropy
                del z, target
            else:
                lab = labels[sl].to(device)[:, None]
        for j, layer in enumerate(layers):
            with torch.set_grad_enabled(backward and torch.is_grad_enabled()):
                z = products.logits(lens.transform(resids[layer, sl], layer))
            with torch.no_grad():                                       # z becomes d loss / d z
                loss = loss_and_grad_(z, neg_target=neg_target, neg_entropy=neg_entropy, labels=lab,
                                      target_scale=target_scale, scale=scale if backward else 0.0)
                total = loss.double().sum()
                if not torch.isfinite(total):
                    raise diverged("the loss", layer, step)
                sums[j] += total
            if backward:
                products.backward(z)
    return sums.cpu()
