"""Training: fitting a tuned lens's translators to the frozen model's own output distribution.

- :mod:`.config`: :class:`~tl_tunedlens.training.config.TrainConfig`, the one source of settings (presets, validation, token budget);
- :mod:`.order`: which sequences each part of a run reads (seeded, resumable, start and steps disjoint);
- :mod:`.lstsq`: the closed-form least-squares (ridge) start;
- :mod:`.loss`: the KL / CE loss and its gradient, one logits block at a time (on :mod:`tl_tunedlens.core.vocab`),
  and the divergence watch;
- :mod:`.optim`: optimiser and learning-rate schedule;
- :mod:`.precondition`: the whitened step (``optimizer="whitened"``), from the least-squares sample's moments;
- :mod:`.budget`: fitting to a wall-clock budget (a measured warm-up, a plan, a deadline);
- :mod:`.trainer`: :func:`~tl_tunedlens.training.trainer.train_lens` (prepare, start, step, finish) with checkpoints and resume.

Runs under ``torchrun`` through :mod:`tl_tunedlens.core.distributed`.

May import: :mod:`tl_tunedlens.core`, :mod:`tl_tunedlens.artifacts` (checkpoints), :mod:`tl_tunedlens.errors`.
"""

from ..errors import TrainingDivergedError
from .config import PRESETS, TrainConfig
from .lstsq import lstsq_init_
from .trainer import TrainResult, train_lens

__all__ = ["TrainConfig", "PRESETS", "TrainResult", "TrainingDivergedError", "train_lens", "lstsq_init_"]
