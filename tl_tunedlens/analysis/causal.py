"""Causal bases and ablation effects (Belrose et al. 2023, the causal-fidelity analysis).

- :func:`causal_basis`: for one lens layer, ``k`` orthonormal directions whose (mean) ablation from the
  residual stream changes the **lens's** output most, found greedily on real residuals: direction
  ``i`` maximises ``mean KL(lens(h) || lens(ablate(h, u)))`` over unit ``u`` orthogonal to the
  directions before it (start: the largest-variance direction of ``h - mu`` left; then L-BFGS). The
  directions are returned ordered by their own effect, so the effects are non-increasing. Unlike the
  reference package, which feeds a ``[d_model, vocab]`` matrix to the translator (correct only for the
  logit lens), every direction is scored by the lens's output on the residuals themselves.
- :func:`ablation_effects`: for any orthonormal directions, direction by direction, the effect of
  ablating it at that layer on the lens's output (cached residuals, decoded with and without) and on
  the model's own final output (the same ablation inside ``run_with_hooks``), both as mean KL
  (clean || ablated) in nats, and their Spearman rank correlation: the paper's claim is that the
  directions that matter to a tuned lens matter to the model.
- :func:`spearman`: rank correlation with average ranks for ties.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..core.ablation import ablate, check_method, check_subspace
from ..core.backend import Model, capture_residuals, flatten_tokens, to_tokens
from ..core.unembed import to_log_probs
from ..errors import LensError
from . import stats

if TYPE_CHECKING:
    from ..lens import Lens


@dataclass
class CausalBasis:
    """Directions ``[d_model k]`` (orthonormal columns) at lens ``layer`` (read at ``hook_name``) and the
    lens effect of mean-ablating each alone (``lens_effects`` ``[k]``, mean KL in nats, non-increasing)."""

    layer: int
    hook_name: str
    directions: Float[Tensor, "d_model k"]
    lens_effects: Float[Tensor, " k"]


@dataclass
class CausalEffects:
    """Per direction, the mean KL (nats) from the clean to the ablated distribution of the lens at the
    ablated layer (``lens_effects``) and of the model's own output (``model_effects``); ``spearman``: their
    rank correlation (NaN for fewer than two directions); ``method``: the ablation used."""

    layer: int
    method: str
    lens_effects: Float[Tensor, " k"]
    model_effects: Float[Tensor, " k"]
    spearman: float


def _ranks(x: Tensor) -> Tensor:
    """Ranks 1..n, ties sharing their average rank."""
    less = (x[None, :] < x[:, None]).sum(1, dtype=torch.float64)
    equal = (x[None, :] == x[:, None]).sum(1, dtype=torch.float64)
    return less + (equal + 1) / 2


def spearman(a: Float[Tensor, " n"], b: Float[Tensor, " n"]) -> float:
    """Spearman's rank correlation of ``a`` and ``b`` (average ranks for ties; NaN if either is constant
    or ``n < 2``)."""
    if a.shape != b.shape or a.ndim != 1:
        raise LensError(f"spearman needs two vectors of one length, got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) < 2:
        return float("nan")
    ra, rb = _ranks(a.cpu()), _ranks(b.cpu())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = ra.norm() * rb.norm()
    return float(((ra @ rb) / denom).clamp(-1, 1)) if denom > 0 else float("nan")


def layer_residuals(lens: "Lens", model: Model, tokens: Tensor | str, layer: int
                    ) -> tuple[Int[Tensor, "batch pos"], Float[Tensor, "n d_model"]]:
    """The tokens and the residuals ``[batch * pos, d_model]`` read at lens ``layer`` (one frozen pass)."""
    lens.check_model(model)
    tokens = to_tokens(model, tokens)
    resids = capture_residuals(model, tokens, [lens.hook_names[lens.layer_index(layer)]])
    return tokens, flatten_tokens(resids)[0]


def _mean_kl(clean: Tensor, other: Tensor) -> Tensor:
    return stats.kl_divergence(clean, other).mean()


def causal_basis(lens: "Lens", model: Model, tokens: Tensor | str, layer: int, k: int = 8, *,
                 max_iter: int = 20) -> CausalBasis:
    """``k`` orthonormal directions at lens ``layer`` whose mean ablation changes the lens's output most
    on the residuals of ``tokens`` (see the module docstring). ``max_iter``: L-BFGS iterations per direction."""
    layer = lens.layer_index(layer)
    _, h = layer_residuals(lens, model, tokens, layer)
    if not 1 <= int(k) <= lens.d_model:
        raise LensError(f"k={k} directions: use 1..d_model={lens.d_model}")
    work = torch.promote_types(h.dtype, torch.float32)
    h = h.to(work)
    mu = h.mean(0)
    with torch.no_grad():
        clean = lens.log_probs(h, layer)
    basis = torch.zeros(lens.d_model, 0, dtype=work, device=h.device)

    def unit(v: Tensor) -> Tensor:
        v = v - basis @ (basis.T @ v)
        return v / v.norm()

    def effect(u: Tensor) -> Tensor:
        return _mean_kl(clean, lens.log_probs(ablate(h, u[:, None], "mean", mean=mu), layer))

    effects = []
    for _ in range(int(k)):
        centred = (h - mu) - (h - mu) @ basis @ basis.T
        v = torch.linalg.svd(centred, full_matrices=False).Vh[0].clone().requires_grad_(True)
        if max_iter:
            optimizer = torch.optim.LBFGS([v], max_iter=int(max_iter), line_search_fn="strong_wolfe")

            def closure() -> Tensor:
                with torch.enable_grad():
                    loss = -effect(unit(v))
                    (v.grad,) = torch.autograd.grad(loss, v)
                return loss.detach()

            optimizer.step(closure)
        with torch.no_grad():
            u = unit(v.detach())
            u = unit(u)  # once more: orthogonal to rounding error
            effects.append(effect(u))
            basis = torch.cat([basis, u[:, None]], 1)
    effects_t = torch.stack(effects)
    order = effects_t.argsort(descending=True)
    return CausalBasis(layer, lens.hook_names[layer], basis[:, order].detach(), effects_t[order].detach().cpu())


@torch.no_grad()
def ablation_effects(lens: "Lens", model: Model, tokens: Tensor | str, layer: int,
                     directions: Float[Tensor, "d_model k"], *, method: str = "mean",
                     mean: Float[Tensor, " d_model"] | None = None, seed: int = 0) -> CausalEffects:
    """Direction by direction (each column of ``directions`` alone), the effect of ablating it at lens
    ``layer`` by ``method`` on the lens's output there and on the model's final output, for ``tokens``;
    and their Spearman correlation. ``mean``: the mean residual of mean ablation (default: over ``tokens``)."""
    layer = lens.layer_index(layer)
    check_method(method)
    directions = check_subspace(directions, lens.d_model)
    tokens, h = layer_residuals(lens, model, tokens, layer)
    mean = h.mean(0) if mean is None else mean
    clean_lens = lens.log_probs(h, layer)
    clean_model = to_log_probs(model(tokens)).flatten(0, 1)
    lens_fx, model_fx = [], []
    for i in range(directions.shape[1]):
        u = directions[:, i:i + 1]
        lens_fx.append(_mean_kl(clean_lens, lens.log_probs(ablate(h, u, method, mean=mean, seed=seed), layer)))
        logits = model.run_with_hooks(tokens, fwd_hooks=lens.hooks(ablate=layer, subspace=u, method=method,
                                                                    mean=mean, seed=seed))
        model_fx.append(_mean_kl(clean_model, to_log_probs(logits).flatten(0, 1)))
    lens_t, model_t = torch.stack(lens_fx).cpu(), torch.stack(model_fx).cpu()
    return CausalEffects(layer, method, lens_t, model_t, spearman(lens_t, model_t))
