"""The validation slice: training sequences never trained on, scored every few KL steps, so that no block of
steps makes a layer worse.

A run with KL steps sets aside ``TrainConfig.validation_tokens`` of its training sequences (the stream
positions right after the least-squares sample, :mod:`.order`; never the held-out split). Their residual
streams are captured once; :meth:`Validation.layer_kl` scores every trained layer on them (mean
KL(model || lens), nats, or with ``loss="ce"`` the cross-entropy against the next token; exact, forward
only: about half a KL step's work per token). The trainer
scores the start, then the steps since the last score every ``validate_every`` steps, at every checkpoint
and at the end (:func:`judge_block`): a layer whose steps raised its validation KL is put back where they
began and continues with a smaller learning rate (:func:`~tl_tunedlens.training.optim.reject_step_`), so
the lens returned is, layer by layer, the best one seen on the validation slice, the start included.
Under ``torchrun`` each rank scores its share of the slice and the sums are added over the ranks, so
every rank takes the same decisions.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..core.backend import capture_residuals, flatten_tokens
from ..core.distributed import SINGLE, Dist
from ..core.vocab import VocabProducts
from .loss import accumulate_lens_grads
from .optim import accept_step_, reject_step_

from ..core.backend import Model

if TYPE_CHECKING:
    from ..lens import TunedLens
    from .trainer import Run


class Validation:
    """The residual streams of the validation sequences, and the best validation KL of each trained layer."""

    def __init__(self, model: Model, lens: "TunedLens", sequences: Int[Tensor, "n_seq seq_len"], *,
                 micro_batch: int, chunk_tokens: int, products: VocabProducts, ce: bool = False, dist: Dist = SINGLE):
        n_seq, seq_len = sequences.shape
        self.total = n_seq * (seq_len - 1 if ce else seq_len)   # positions over every rank
        mine = sequences[dist.shard(range(n_seq))]               # under torchrun: this rank's share
        with torch.no_grad():
            resids = [capture_residuals(model, mine[i:i + micro_batch], lens.hook_names)
                      for i in range(0, len(mine), micro_batch)]
            self.resids: Float[Tensor, "layer n d_model"] | None = torch.cat(
                [flatten_tokens(r[:, :, :-1] if ce else r) for r in resids], 1) if resids else None
        self.labels: Int[Tensor, " n"] | None = mine[:, 1:].flatten() if ce else None
        self.dist = dist
        self.chunk_tokens = chunk_tokens
        self.products = products
        self.seconds = 0.0                       # wall time of the last scoring (the budget reserves one)
        self.best: list[float] | None = None    # per trained layer
        self.rejected: list[int] | None = None  # rejected steps per trained layer

    @property
    def tokens(self) -> int:
        """Positions scored (over every rank)."""
        return self.total

    @torch.no_grad()
    def layer_kl(self, lens: "TunedLens", layers: list[int]) -> Float[Tensor, " layer"]:
        """Mean KL(model || lens) (or cross-entropy) on the validation positions for each of ``layers`` (nats, fp64)."""
        t0 = time.perf_counter()
        sums = torch.zeros(len(layers), dtype=torch.float64)
        if self.resids is not None:
            sums = accumulate_lens_grads(lens, self.resids, layers, labels=self.labels, chunk_tokens=self.chunk_tokens,
                                         products=self.products, backward=False)
        self.dist.all_reduce_([sums], "the validation all-reduce")   # every rank judges the same numbers
        self.seconds = time.perf_counter() - t0
        return sums / self.total

    def judge(self, kl: Float[Tensor, " layer"]) -> list[bool]:
        """Record a step's validation KL per trained layer; ``True`` where it is no worse than the best so
        far (the first call, on the start, accepts every layer)."""
        values = kl.tolist()
        if self.best is None:
            self.best, self.rejected = values, [0] * len(values)
            return [True] * len(values)
        keep = [v <= b for v, b in zip(values, self.best)]
        for j, ok in enumerate(keep):
            if ok:
                self.best[j] = values[j]
            else:
                self.rejected[j] += 1
        return keep

    @property
    def mean(self) -> float:
        """Mean over the trained layers of their best validation KL."""
        return sum(self.best) / len(self.best)

    def state_dict(self) -> dict:
        """What a checkpoint keeps (the residuals are captured again on resume)."""
        return {"best": self.best, "rejected": self.rejected}

    def load_state_dict(self, state: dict | None) -> None:
        """Continue from :meth:`state_dict`."""
        state = state or {}
        self.best, self.rejected = state.get("best"), state.get("rejected")


def judge_block(run: "Run") -> None:
    """Score the steps since the last judgement on the validation slice: a layer whose validation KL rose
    goes back to where they began, with half its learning rate; a layer they improved speeds up again."""
    if run.validation is None or run.block_start is None:
        return
    keep = run.validation.judge(run.validation.layer_kl(run.lens, run.layers))
    with torch.no_grad():
        for j, layer in enumerate(run.layers):
            if keep[j]:
                accept_step_(run.optimizer, layer)
                continue
            for p, old in zip(run.lens.translators[layer].parameters(), run.block_start[j]):
                p.copy_(old)
            reject_step_(run.optimizer, layer)
    run.block_start = None
