"""Optimiser and learning-rate schedule of the tuned-lens trainer (from a validated :class:`~tl_tunedlens.training.config.TrainConfig`)."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .config import DEFAULT_LR, TrainConfig


def make_optimizer(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (``lr`` in the paper's convention: torch lr = ``lr * (1 - momentum)``),
    Adam with AMSGrad, or plain SGD for ``"whitened"`` (its gradients are whitened by the trainer,
    :mod:`.precondition`); ``lr`` defaults to 1.0 (SGD), 1e-3 (Adam) or 20 (whitened)."""
    lr = DEFAULT_LR[config.optimizer] if config.lr is None else float(config.lr)
    if config.optimizer == "whitened":
        return torch.optim.SGD(params, lr=lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr * (1.0 - config.momentum), momentum=config.momentum, nesterov=True,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=lr, amsgrad=True, weight_decay=config.weight_decay)


def lr_factor(step: int, steps: int, warmup: int = 0) -> float:
    """Multiplier of the base learning rate at (0-based) ``step`` of ``steps``.

    Linear warmup over the first ``warmup`` steps (never 0), then linear decay that reaches zero
    only *after* the last step, so every one of the ``steps`` steps updates the lens."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return (steps - step) / (steps - warmup) if steps > warmup else 1.0  # no step at all: never used


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup (``config.warmup_steps``) then linear decay to zero over ``config.steps``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config.steps, config.warmup_steps))
