"""Closed-form start for a tuned lens: per-layer ridge regression onto the final residual stream.

For every lens layer ``l < n_layers`` the translator is set to the ridge solution of

    h_final ~= W h_l + b        (h_final = input of ln_final = residual at ``lens.hook_names[-1]``)

so that ``h + A h + b`` with ``A = W - I`` reproduces it. One pass over a sample accumulates, per
layer, the sums ``sum x``, ``sum x x^T`` and ``sum x y^T`` (fp32 products of shifted values, fp64 sums) (cost ``O(n_layers d_model^2)``
per token, independent of the vocabulary); :func:`solve_ridge` then solves ``d_model x d_model``
systems. Ridge strength is relative: ``lambda = ridge * trace(Cov x) / d_model``.

Under ``torchrun`` each rank collects the sums of its share of the sample; they are moved to rank 0's
shift (:meth:`RidgeStats.reshift_`, exact) and summed over the ranks, so every rank solves the same system.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..core.backend import capture_residuals, flatten_tokens
from ..errors import LensError
from ..core.distributed import SINGLE, Dist

from ..core.backend import Model

if TYPE_CHECKING:
    from ..lens import TunedLens

DEFAULT_RIDGE = 1e-4


@dataclass
class RidgeStats:
    """Running sums over tokens for each regressed layer (``layer`` = rows of ``layers``).

    Sums are of *shifted* values ``x - shift_x``, ``y - shift_y`` (shifts = the first batch's means,
    or zero with ``centre=False``): the covariances are unchanged, cancellation is avoided, so each
    batch's products can run in fp32 while the running sums are kept in fp64."""

    layers: list[int]
    d_model: int
    centre: bool = True
    n: int = 0
    sx: Tensor = field(init=False)    # [layer d]
    sy: Tensor = field(init=False)    # [d]
    sxx: Tensor = field(init=False)   # [layer d d]
    sxy: Tensor = field(init=False)   # [layer d d]
    shift_x: Tensor | None = None     # [layer d]
    shift_y: Tensor | None = None     # [d]

    def __post_init__(self) -> None:
        k, d = len(self.layers), self.d_model
        self.sx = torch.zeros(k, d, dtype=torch.float64)
        self.sy = torch.zeros(d, dtype=torch.float64)
        self.sxx = torch.zeros(k, d, d, dtype=torch.float64)
        self.sxy = torch.zeros(k, d, d, dtype=torch.float64)

    @torch.no_grad()
    def update(self, x: Float[Tensor, "layer n d_model"], y: Float[Tensor, "n d_model"]) -> None:
        """Add ``n`` tokens: ``x[i]`` is the residual of ``layers[i]``, ``y`` the final residual."""
        x = x.detach().float()  # products on the model's device, sums in fp64 there
        y = y.detach().float()
        if self.sx.device != x.device:
            self.sx, self.sy, self.sxx, self.sxy = (t.to(x.device) for t in (self.sx, self.sy, self.sxx, self.sxy))
        if self.shift_x is None:
            self.shift_x = x.mean(1) if self.centre else x.new_zeros(x.shape[0], x.shape[2])
            self.shift_y = y.mean(0) if self.centre else y.new_zeros(y.shape[1])
        x = x - self.shift_x[:, None]
        y = y - self.shift_y
        self.n += y.shape[0]
        self.sx += x.sum(1, dtype=torch.float64)
        self.sy += y.sum(0, dtype=torch.float64)
        self.sxx += (x.transpose(1, 2) @ x).double()
        self.sxy += (x.transpose(1, 2) @ y).double()

    @torch.no_grad()
    def reshift_(self, shift_x: Float[Tensor, "layer d_model"], shift_y: Float[Tensor, " d_model"]) -> None:
        """Re-express the sums as sums of ``x - shift_x``, ``y - shift_y`` (exact algebra, in fp64)."""
        shift_x, shift_y = shift_x.to(self.sx.device), shift_y.to(self.sx.device)
        if self.shift_x is not None and self.n:
            dx = (self.shift_x.to(shift_x) - shift_x).double()     # (x - a) + dx = x - c
            dy = (self.shift_y.to(shift_y) - shift_y).double()
            n, sx, sy = float(self.n), self.sx.clone(), self.sy.clone()
            self.sxx += (torch.einsum("ki,kj->kij", sx, dx) + torch.einsum("ki,kj->kij", dx, sx)
                         + n * torch.einsum("ki,kj->kij", dx, dx))
            self.sxy += torch.einsum("ki,j->kij", sx, dy) + torch.einsum("ki,j->kij", dx, sy) + n * torch.einsum("ki,j->kij", dx, dy)
            self.sx += n * dx
            self.sy += n * dy
        self.shift_x, self.shift_y = shift_x.clone(), shift_y.clone()

    def all_reduce_(self, dist: Dist) -> None:
        """Sum the statistics of every rank (each moved first to rank 0's shift) into every rank's copy."""
        if not dist.active:
            return
        k, d = len(self.layers), self.d_model
        shift = torch.cat([self.shift_x.reshape(-1), self.shift_y]).double() if self.shift_x is not None \
            else torch.zeros(k * d + d, dtype=torch.float64)
        dist.broadcast_(shift, "the least-squares shift broadcast")
        self.reshift_(shift[:k * d].view(k, d).float(), shift[k * d:].float())
        n = torch.tensor([float(self.n)], dtype=torch.float64)
        dist.all_reduce_([self.sx, self.sy, self.sxx, self.sxy, n], "the least-squares statistics all-reduce")
        self.n = int(n.item())


@torch.no_grad()
def solve_ridge(stats: RidgeStats, ridge: float = DEFAULT_RIDGE, bias: bool = True
                ) -> list[tuple[Float[Tensor, "d_model d_model"], Float[Tensor, " d_model"]]]:
    """Per layer, ``(W, b)`` with ``h_final ~= W h + b`` (``b`` zero and no centring when ``bias=False``)."""
    if stats.n < 2:
        raise LensError(f"the least-squares start needs at least 2 tokens, got {stats.n}: pass more data")
    if ridge < 0:
        raise LensError(f"ridge {ridge} must be >= 0")
    n, d = stats.n, stats.d_model
    src, stats = stats, dataclasses.replace(stats)  # a CPU copy: the solves run in fp64 on the CPU
    for name in ("sx", "sy", "sxx", "sxy", "shift_x", "shift_y"):
        setattr(stats, name, getattr(src, name).cpu())
    eye = torch.eye(d, dtype=torch.float64)
    out = []
    if not bias and stats.centre:
        raise LensError("a lens without bias needs RidgeStats(centre=False): the fit has no intercept")
    for i in range(len(stats.layers)):
        cxx = stats.sxx[i] / n
        cxy = stats.sxy[i] / n
        mx, my = stats.sx[i] / n, stats.sy / n          # means of the shifted values
        if bias:
            cxx = cxx - torch.outer(mx, mx)
            cxy = cxy - torch.outer(mx, my)
            mx, my = mx + stats.shift_x[i].double(), my + stats.shift_y.double()
        lam = ridge * float(cxx.diagonal().sum()) / d
        lam = max(lam, 1e-12 * max(float(cxx.abs().max()), 1.0))
        w_t = torch.linalg.solve(cxx + lam * eye, cxy)   # [d_in d_out]
        w = w_t.T.contiguous()
        b = my - w @ mx if bias else torch.zeros(d, dtype=torch.float64)
        out.append((w, b))
    return out


@torch.no_grad()
def collect_stats(model: Model, lens: "TunedLens", sequences: Int[Tensor, "n_seq seq_len"], *,
                  layers: list[int] | None = None, micro_batch: int = 1, progress: bool = False, centre: bool = True,
                  deadline: float | None = None, dist: Dist = SINGLE) -> RidgeStats:
    """One frozen forward pass over ``sequences`` accumulating :class:`RidgeStats`; with ``deadline``
    (a ``time.perf_counter()`` value) it stops before a micro-batch that would end past it (after one at least).
    ``dist``: under ``torchrun``, ``sequences`` is this rank's share and the sums returned are every rank's."""
    from ..core.progress import progress_bar as tqdm

    layers = list(range(lens.n_layers)) if layers is None else list(layers)
    stats = RidgeStats(layers, lens.d_model, centre=centre)
    names = [lens.hook_names[i] for i in layers] + [lens.hook_names[-1]]
    batches = range(0, len(sequences), max(1, micro_batch))
    t0 = time.perf_counter()
    for k, start in enumerate(tqdm(batches, desc="lstsq stats", disable=not progress, leave=False)):
        if deadline is not None and k and time.perf_counter() + (time.perf_counter() - t0) / k > deadline:
            break
        resids = flatten_tokens(capture_residuals(model, sequences[start:start + micro_batch], names))
        stats.update(resids[:-1], resids[-1])
    stats.all_reduce_(dist)
    return stats


@torch.no_grad()
def lstsq_init_(lens: "TunedLens", model: Model, sequences: Int[Tensor, "n_seq seq_len"], *,
                ridge: float = DEFAULT_RIDGE, layers: list[int] | None = None, micro_batch: int = 1, progress: bool = False,
                deadline: float | None = None, dist: Dist = SINGLE) -> dict:
    """Set the translators of ``layers`` (default all) to the ridge solution; returns a summary dict.
    ``deadline``, ``dist``: see :func:`collect_stats` (the tokens actually used are in the summary)."""
    stats = collect_stats(model, lens, sequences, layers=layers, micro_batch=micro_batch, progress=progress,
                          centre=lens.bias, deadline=deadline, dist=dist)
    return fit_from_stats_(lens, stats, ridge)


@torch.no_grad()
def fit_from_stats_(lens: "TunedLens", stats: RidgeStats, ridge: float = DEFAULT_RIDGE) -> dict:
    """Set the translators of ``stats.layers`` to the ridge solution of ``stats``; returns a summary dict."""
    set_translators_(lens, stats.layers, solve_ridge(stats, ridge, bias=lens.bias))
    return {"init": "lstsq", "lstsq_tokens": stats.n, "ridge": ridge}


@torch.no_grad()
def set_translators_(lens: "TunedLens", layers: list[int], solution: list[tuple[Tensor, Tensor]]) -> None:
    """Write ``h_final ~= W h + b`` solutions into the translators: ``A = W - I``, bias ``b``."""
    eye = torch.eye(lens.d_model, dtype=torch.float64)
    for layer, (w, b) in zip(layers, solution):
        translator = lens.translators[layer]
        translator.weight.copy_((w - eye).to(translator.weight))
        if translator.bias is not None:
            translator.bias.copy_(b.to(translator.bias))
        if not torch.isfinite(translator.weight).all():
            raise LensError(f"the least-squares start gave non-finite weights at layer {layer}: raise --ridge")
