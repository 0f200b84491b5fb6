"""Optimiser and learning-rate schedule of the tuned-lens trainer (paper defaults)."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .errors import LensError

OPTIMIZERS = ("sgd", "adam")
DEFAULT_LR = {"sgd": 1.0, "adam": 1e-3}


def make_optimizer(params: Iterable[nn.Parameter], name: str = "sgd", *, lr: float | None = None,
                   momentum: float = 0.9, weight_decay: float = 1e-3) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (``lr`` in the paper's convention: torch lr = ``lr * (1 - momentum)``)
    or Adam with AMSGrad. ``lr`` defaults to 1.0 (SGD) or 1e-3 (Adam)."""
    if name not in OPTIMIZERS:
        raise LensError(f"unknown optimizer {name!r}: use one of {', '.join(OPTIMIZERS)}")
    lr = DEFAULT_LR[name] if lr is None else float(lr)
    if not lr > 0:
        raise LensError(f"learning rate {lr} must be positive")
    if name == "sgd":
        if not 0.0 < momentum < 1.0:
            raise LensError(f"momentum {momentum} is out of range: use 0 < momentum < 1 with Nesterov SGD")
        return torch.optim.SGD(params, lr=lr * (1.0 - momentum), momentum=momentum, nesterov=True,
                               weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, amsgrad=True, weight_decay=weight_decay)


def lr_factor(step: int, steps: int, warmup: int = 0) -> float:
    """Multiplier of the base learning rate at (0-based) ``step`` of ``steps``.

    Linear warmup over the first ``warmup`` steps (never 0), then linear decay that reaches zero
    only *after* the last step, so every one of the ``steps`` steps updates the lens."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return (steps - step) / (steps - warmup)


def make_scheduler(optimizer: torch.optim.Optimizer, steps: int, warmup: int = 0
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    if warmup < 0 or warmup >= steps:
        raise LensError(f"warmup of {warmup} steps must be >= 0 and below the {steps} training steps")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, warmup))
