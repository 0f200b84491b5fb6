"""Optimisers and the learning-rate schedule of the tuned-lens trainer (from a validated :class:`~tl_tunedlens.training.config.TrainConfig`).

Parameters come in one group per translator (:func:`layer_groups`, key ``"layer"``), so that a layer
whose step made its validation loss worse can be put back and given a smaller step on its own
(:func:`reject_step_`), and speed up again as its steps are kept (:func:`accept_step_`). Each group keeps its base learning rate (``"initial_lr"``) and its own factor
(``"scale"``); :func:`set_lrs` applies the schedule (:func:`lr_factor`) before every step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import torch
from torch import nn

from .config import DEFAULT_LR, MUON_BIAS_LR, TrainConfig

if TYPE_CHECKING:
    from ..lens import TunedLens

#: a layer whose step is rejected continues with this factor on its learning rate
BACKTRACK = 0.5
#: a layer whose step is kept continues with this factor on its learning rate (at most its base rate), so a
#: layer slowed by rejections speeds up again
GROW = 1.25


def layer_groups(lens: "TunedLens", layers: list[int]) -> list[dict[str, Any]]:
    """One parameter group per trained translator: ``{"params": [weight, bias], "layer": layer}``."""
    return [{"params": list(lens.translators[i].parameters()), "layer": i} for i in layers]


class Optimizers:
    """Several torch optimisers stepped as one (Muon for the 2-D weights, AdamW for the biases):
    ``param_groups`` of them all, ``step``, ``zero_grad`` and the state dicts."""

    def __init__(self, parts: list[torch.optim.Optimizer]):
        self.parts = parts

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """Every part's parameter groups, in order (the trainer sets their learning rates)."""
        return [g for part in self.parts for g in part.param_groups]

    @property
    def state(self) -> dict:
        """Every part's per-parameter state, merged."""
        return {p: s for part in self.parts for p, s in part.state.items()}

    def step(self) -> None:
        """Step every part."""
        for part in self.parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero (or drop) the gradients of every part."""
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """``{"parts": [each part's state dict]}``, for a checkpoint."""
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        for part, saved in zip(self.parts, state["parts"]):
            part.load_state_dict(saved)

    def forget(self, param: nn.Parameter) -> None:
        """Drop ``param``'s state (moments, momentum) in every part."""
        for part in self.parts:
            part.state.pop(param, None)


def make_optimizer(params: Iterable[nn.Parameter] | list[dict[str, Any]], config: TrainConfig):
    """SGD with Nesterov momentum (``lr`` in the paper's convention: torch lr = ``lr * (1 - momentum)``),
    Adam with AMSGrad, plain SGD for ``"whitened"`` (its gradients are whitened by the trainer,
    :mod:`.precondition`), or ``"muon"``: torch's Muon on the 2-D weights and AdamW (lr ``MUON_BIAS_LR``)
    on the biases, as Muon's authors advise. ``params``: parameters, or groups of :func:`layer_groups`.
    ``lr`` defaults to ``DEFAULT_LR`` of the optimiser."""
    groups = list(params)
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    lr = DEFAULT_LR[config.optimizer] if config.lr is None else float(config.lr)
    wd = config.weight_decay
    if config.optimizer == "muon":
        weights = [{**g, "params": [p for p in g["params"] if p.ndim == 2]} for g in groups]
        biases = [{**g, "params": [p for p in g["params"] if p.ndim != 2]} for g in groups]
        parts = [torch.optim.Muon([g for g in weights if g["params"]], lr=lr, weight_decay=wd)]
        if any(g["params"] for g in biases):
            parts.append(torch.optim.AdamW([g for g in biases if g["params"]], lr=MUON_BIAS_LR, weight_decay=wd))
        optimizer = Optimizers(parts)
    elif config.optimizer == "whitened":
        optimizer = torch.optim.SGD(groups, lr=lr, weight_decay=wd)
    elif config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr * (1.0 - config.momentum), momentum=config.momentum, nesterov=True,
                                    weight_decay=wd)
    else:
        optimizer = torch.optim.Adam(groups, lr=lr, amsgrad=True, weight_decay=wd)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group.setdefault("scale", 1.0)
    return optimizer


def lr_factor(step: int, steps: int, warmup: int = 0) -> float:
    """Multiplier of the base learning rate at (0-based) ``step`` of ``steps``.

    Linear warmup over the first ``warmup`` steps (never 0), then linear decay that reaches zero
    only *after* the last step, so every one of the ``steps`` steps updates the lens."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return (steps - step) / (steps - warmup) if steps > warmup else 1.0  # no step at all: never used


def set_lrs(optimizer, config: TrainConfig, step: int) -> None:
    """Every group's learning rate for (0-based) ``step``: base x its own factor x :func:`lr_factor`."""
    factor = lr_factor(step, config.steps, config.warmup_steps)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * group["scale"] * factor


def accept_step_(optimizer, layer: int) -> None:
    """A step of ``layer`` was kept: its groups continue with ``GROW`` times their learning rate, at most the base."""
    for group in optimizer.param_groups:
        if group.get("layer") == layer:
            group["scale"] = min(1.0, group["scale"] * GROW)


def reject_step_(optimizer, layer: int) -> None:
    """A step of ``layer`` was rejected (its parameters are put back by the caller): its groups continue with
    ``BACKTRACK`` times their learning rate, and their optimiser state (momentum, moments) is dropped."""
    for group in optimizer.param_groups:
        if group.get("layer") == layer:
            group["scale"] *= BACKTRACK
            for p in group["params"]:
                if isinstance(optimizer, Optimizers):
                    optimizer.forget(p)
                else:
                    optimizer.state.pop(p, None)
