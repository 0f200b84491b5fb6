"""Public lens classes: ``TunedLens`` and ``LogitLens`` (core + hooks + save/load)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .core import LogitLensCore, TunedLensCore
from .errors import LensError
from .hooks import HooksMixin
from .io import read_config, read_weights, save_lens
from .unembed import Unembed


class LogitLens(HooksMixin, LogitLensCore):
    """The logit lens: decode every layer's residual stream with the model's final norm and unembedding."""

    @classmethod
    def from_model(cls, model: nn.Module) -> "LogitLens":
        unembed, n_layers, name = cls._model_facts(model)
        return cls(unembed, n_layers, model_name=name)


class TunedLens(HooksMixin, TunedLensCore):
    """A tuned lens: one residual affine translator per layer ``0..n_layers-1`` (Belrose et al. 2023)."""

    training_info: dict[str, Any]

    def __init__(self, unembed: Unembed, n_layers: int, *, bias: bool = True,
                 dtype: torch.dtype | None = None, model_name: str | None = None):
        super().__init__(unembed, n_layers, bias=bias, dtype=dtype, model_name=model_name)
        self.training_info = {}

    @classmethod
    def from_model(cls, model: nn.Module, *, bias: bool = True, dtype: torch.dtype | None = None) -> "TunedLens":
        """An untrained (identity) tuned lens for ``model``: equal to the logit lens exactly."""
        unembed, n_layers, name = cls._model_facts(model)
        return cls(unembed, n_layers, bias=bias, dtype=dtype, model_name=name)

    # --- save / load ----------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, training: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` + ``lens.safetensors`` into folder ``path`` atomically."""
        return save_lens(self, path, training)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module, *, dtype: torch.dtype | None = None) -> "TunedLens":
        """Load a lens saved with :meth:`save` for ``model`` (checked against its unembedding)."""
        config = read_config(path)
        if config["lens_type"] != cls.lens_type:
            raise LensError(f"{path} holds a {config['lens_type']!r}, not a {cls.lens_type!r}")
        unembed, n_layers, name = cls._model_facts(model)
        if config["n_layers"] != n_layers or config["d_model"] != unembed.d_model:
            raise LensError(
                f"{path} was saved for n_layers={config['n_layers']}, d_model={config['d_model']} but the "
                f"model has n_layers={n_layers}, d_model={unembed.d_model}: load it with the model it was trained on"
            )
        unembed.check(
            d_model=config["d_model"], d_vocab=config["d_vocab"], sha256=config.get("unembed_hash"),
            fingerprint=config.get("unembed_fingerprint"), what=f"the lens in {path}",
        )
        saved_dtype = getattr(torch, str(config.get("dtype") or "float32"), None)
        lens = cls(unembed, n_layers, bias=bool(config.get("bias", True)),
                   dtype=dtype or saved_dtype, model_name=config.get("model_name") or name)
        tensors = read_weights(path, lens.state_dict())
        lens.load_state_dict(tensors)
        lens.training_info = dict(config.get("training") or {})
        return lens
