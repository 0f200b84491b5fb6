"""Training settings: one dataclass, its presets, its validation and the token budget it needs.

:class:`TrainConfig` is the single source of the trainer's settings: the ``tl-tunedlens train``
flags, their defaults and help are generated from its fields (see :mod:`tl_tunedlens.cli.options`),
and it validates itself on construction. Two presets:

- ``"laptop"`` (the defaults): the closed-form least-squares start alone, on 20,480 tokens (about
  70 s for SmolLM2-135M on 2 quiet CPU cores). Measured side by side (``bench/time_to_quality.py``),
  the start's held-out KL levels off near 20k tokens; ``--steps N`` adds KL steps (Muon by default, lr 0.06: the
  best at equal tokens in ``bench/time_to_quality.py --only optimizers``; ``"adam"``, ``"sgd"`` and
  ``"whitened"`` the alternatives), scored in blocks of ``validate_every`` steps on a validation slice of
  the training sequences (``validation_tokens``, :mod:`.validation`): a layer whose block raised it is put
  back with half its learning rate (each kept block gives it back a quarter, up to the base rate), so the
  steps never make a layer worse on the slice than the start.
- ``"paper"``: Belrose et al. (2023): identity start, 250 steps x 2^18 tokens, SGD with Nesterov
  momentum 0.9, lr 1.0 (torch lr = lr x (1 - momentum)), weight decay 1e-3, clipping at 1.0,
  linear decay to zero, every step kept (no validation slice: the reference's loop step for step; the
  paper also uses sequences of 2048 tokens: ``--seq-len 2048``).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from ..core.options import check_option, field_kind, option, option_problem
from ..core.vocab import CHUNK_TOKENS, MATMUL_DTYPES
from .lstsq import DEFAULT_RIDGE
from .precondition import DAMPING
from ..errors import LensError

OPTIMIZERS = ("sgd", "adam", "whitened", "muon")
DEFAULT_LR = {"sgd": 1.0, "adam": 1e-3, "whitened": 20.0, "muon": 0.06}
#: learning rate of AdamW on the biases under ``optimizer="muon"`` (Muon takes only 2-D weights)
MUON_BIAS_LR = 1e-3
LOSSES = ("kl", "ce")
INITS = ("identity", "lstsq")


@dataclass
class TrainConfig:
    """Trainer settings (defaults: the ``"laptop"`` preset; :meth:`~tl_tunedlens.training.config.TrainConfig.preset` ``"paper"`` for the paper's)."""

    steps: int = field(default=0, metadata=option(
        "optimiser steps of the KL (or CE) objective after the start (0: the least-squares start alone)", min=0, unit="step"))
    tokens_per_step: int = field(default=512, metadata=option(
        "tokens per optimiser step, rounded down to whole sequences", min=1, unit="token"))
    optimizer: str = field(default="muon", metadata=option(
        "optimiser; whitened: SGD on each translator's gradient times the inverse input second moment of the "
        "least-squares sample (needs --init lstsq; see tl_tunedlens.training.precondition); muon: torch's Muon "
        "on the translators' weights, AdamW on their biases", choices=OPTIMIZERS))
    lr: float | None = field(default=None, metadata=option(
        "learning rate; SGD in the paper's convention, torch lr = lr x (1 - momentum) (default: "
        + ", ".join(f"{lr:g} {name}" for name, lr in DEFAULT_LR.items()) + ")",
        positive=True))
    momentum: float = field(default=0.9, metadata=option("Nesterov momentum of SGD, in [0, 1)", min=0.0, below=1.0))
    weight_decay: float = field(default=1e-3, metadata=option("weight decay (pulls translators to identity)", min=0.0))
    clip: float | None = field(default=1.0, metadata=option(
        "max global gradient norm over the lens parameters; 0 disables", min=0.0))
    warmup_steps: int = field(default=0, metadata=option("linear warmup steps", min=0, unit="step", flag="--warmup"))
    loss: str = field(default="kl", metadata=option(
        "kl: KL from the model's output to the lens; ce: cross-entropy against the next token", choices=LOSSES))
    seed: int = field(default=0, metadata=option("seed of the data order"))
    micro_batch: int | None = field(default=None, metadata=option(
        "sequences per model forward (default: about --chunk-tokens tokens)", min=1, unit="sequence"))
    chunk_tokens: int = field(default=CHUNK_TOKENS, metadata=option(
        "tokens per [chunk, d_vocab] logits block; bounds memory", min=1, unit="token"))
    checkpoint_every: int = field(default=10, metadata=option("steps between checkpoints, 0 for none", min=0, unit="step"))
    init: str = field(default="lstsq", metadata=option(
        "identity (= the logit lens) or the closed-form ridge-regression start", choices=INITS))
    lstsq_tokens: int = field(default=20480, metadata=option(
        "tokens for the least-squares start (drawn apart from the steps' tokens)", min=1, unit="token"))
    validation_tokens: int = field(default=512, metadata=option(
        "training tokens set aside (never trained on) to score the KL steps every --validate-every steps: a "
        "layer whose steps raised its validation KL is put back and continues with half its learning rate, so "
        "the lens kept is the best seen, the start included (used only with KL steps; 0: no slice, every step "
        "is kept, as in the paper)", min=0, unit="token"))
    validate_every: int = field(default=5, metadata=option(
        "KL steps between scores on the validation slice (also scored at every checkpoint and at the end): "
        "single noisy steps are judged together, and the slice costs a fifth as much", min=1, unit="step"))
    ridge: float = field(default=DEFAULT_RIDGE, metadata=option("relative ridge strength of the least-squares start", min=0.0))
    damping: float = field(default=DAMPING, metadata=option(
        "relative damping of the input second moment of --optimizer whitened", positive=True))
    layers: list[int] | None = field(default=None, metadata=option("train only these translators (default: all)"))
    time_budget: float | None = field(default=None, metadata=option(
        "seconds of fitting (the warm-up, the least-squares start and the KL steps; loading the model and data "
        "and saving come on top): plans the least-squares sample and the KL steps from a short measured "
        "warm-up (at most a tenth of the budget; they replace --lstsq-tokens and --steps), stops cleanly "
        "before the budget runs out (with a checkpoint), and records the plan with the lens", positive=True, unit="s"))
    matmul_dtype: str = field(default="auto", metadata=option(
        "precision of the lens's vocabulary matmuls (the softmax, loss and translators stay fp32); auto: bfloat16 "
        "where a measured product runs at least 1.25x faster than float32 (hardware with bf16 instructions), "
        "else the model's precision", choices=("auto", *MATMUL_DTYPES), label="matmul dtype"))

    def __post_init__(self) -> None:
        self.validate()

    # --- presets ----------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str = "laptop", **overrides: Any) -> "TrainConfig":
        """The settings of preset ``name`` (see the module docstring) with ``overrides`` applied."""
        if name not in PRESETS:
            raise LensError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    # --- validation -------------------------------------------------------------------
    def validate(self) -> None:
        """Check every field against its rules (field metadata) and the cross-field ones."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind, is_list, optional = field_kind(hints[f.name])
            if value is None and optional:
                continue
            if is_list:
                if not isinstance(value, (list, tuple)) or not value or any(
                        option_problem(v, f.metadata, kind) for v in value):
                    raise LensError(f"{f.name}={value!r}: pass a non-empty list of layer numbers")
                continue
            check_option(f.name, value, f.metadata, kind)
        if self.optimizer == "whitened" and self.init != "lstsq":
            raise LensError("--optimizer whitened needs the least-squares start's statistics: use --init lstsq "
                            "(or --optimizer adam/sgd with --init identity)")
        if self.steps == 0 and self.init != "lstsq" and self.time_budget is None:
            raise LensError("--steps 0 trains nothing from the identity start: pass --steps >= 1 or --init lstsq")
        if self.warmup_steps and not self.warmup_steps < self.steps:
            raise LensError(f"warmup of {self.warmup_steps} steps must be >= 0 and below the {self.steps} steps")

    def check(self, seq_len: int) -> None:
        """The checks that need the data's sequence length."""
        if seq_len < 2:
            raise LensError(f"sequence length {seq_len} is too short: use at least 2")
        if self.tokens_per_step < seq_len:
            raise LensError(f"tokens per step {self.tokens_per_step} is below one sequence of {seq_len}: "
                            "raise --tokens-per-step or lower --seq-len")

    # --- what a run needs ---------------------------------------------------------------
    def sequences_per_step(self, seq_len: int) -> int:
        """Sequences per optimiser step: ``tokens_per_step // seq_len``, at least one."""
        return max(1, self.tokens_per_step // seq_len)

    def lstsq_sequences(self, seq_len: int) -> int:
        """Sequences of the least-squares sample (0 for the identity start)."""
        return math.ceil(self.lstsq_tokens / seq_len) if self.init == "lstsq" else 0

    def validation_sequences(self, seq_len: int) -> int:
        """Sequences of the validation slice (0 without KL steps)."""
        return math.ceil(self.validation_tokens / seq_len) if self.steps and self.validation_tokens else 0

    def token_budget(self, seq_len: int) -> int:
        """Tokens a run reads without reusing a sequence: the least-squares sample, the validation slice,
        then every step's."""
        return (self.lstsq_sequences(seq_len) + self.validation_sequences(seq_len)
                + self.steps * self.sequences_per_step(seq_len)) * seq_len



PRESETS: dict[str, dict[str, Any]] = {
    "laptop": {},
    "paper": {"steps": 250, "tokens_per_step": 2**18, "optimizer": "sgd", "lr": 1.0, "momentum": 0.9,
              "weight_decay": 1e-3, "clip": 1.0, "warmup_steps": 0, "loss": "kl", "init": "identity",
              "validation_tokens": 0},
}
