"""Public lens classes: ``TunedLens`` and ``LogitLens`` (core + hooks + save/load)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import artifacts
from .core import LogitLensCore, TunedLensCore
from .hooks import HooksMixin
from .hub import upload_lens
from .reference_format import model_unembed_hash
from .residual_basis import residual_stream_kind
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
    #: residual stream the translators were trained on: "raw" (Hugging Face hidden states),
    #: "centred" (center_writing_weights on a LayerNorm model) or None (unknown)
    residual_stream: str | None = None
    #: the reference package's hash of the Hugging Face unembedding, when known
    reference_unembed_hash: str | None = None

    def __init__(self, unembed: Unembed, n_layers: int, *, bias: bool = True,
                 dtype: torch.dtype | None = None, model_name: str | None = None):
        super().__init__(unembed, n_layers, bias=bias, dtype=dtype, model_name=model_name)
        self.training_info = {}

    @classmethod
    def from_model(cls, model: nn.Module, *, bias: bool = True, dtype: torch.dtype | None = None) -> "TunedLens":
        """An untrained (identity) tuned lens for ``model``: equal to the logit lens exactly."""
        unembed, n_layers, name = cls._model_facts(model)
        lens = cls(unembed, n_layers, bias=bias, dtype=dtype, model_name=name)
        lens.residual_stream = residual_stream_kind(model)
        lens.reference_unembed_hash = model_unembed_hash(unembed)
        return lens

    # --- save / load / hub (see tl_tunedlens.artifacts) ------------------------------
    def save(self, path: str | os.PathLike, *, training: dict[str, Any] | None = None,
             format: str = "tl-tunedlens") -> Path:
        """Write the lens into folder ``path`` atomically.

        ``format="tl-tunedlens"``: ``config.json`` + ``lens.safetensors`` (``training`` metadata
        included); ``format="tuned-lens"``: the reference package's ``config.json`` + ``params.pt``."""
        return artifacts.save(self, path, format=format, training=training)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module, *, dtype: torch.dtype | None = None) -> "TunedLens":
        """Load a lens folder (ours or the reference's) for ``model``, checked against its
        unembedding, ``n_layers``, ``d_model`` and residual stream."""
        return artifacts.load(cls, path, model, dtype=dtype)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, model: nn.Module, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, *, dtype: torch.dtype | None = None,
                        repo_type: str | None = None, subfolder: str | None = None,
                        token: str | bool | None = None) -> "TunedLens":
        """Load from a local folder, a hub repo, or the reference space ``AlignmentResearch/tuned-lens``
        (``lens/<path_or_repo_id>``); offline, only the Hugging Face cache is used."""
        return artifacts.from_pretrained(cls, path_or_repo_id, model, revision=revision, cache_dir=cache_dir,
                                         dtype=dtype, repo_type=repo_type, subfolder=subfolder, token=token)

    def push_to_hub(self, repo_id: str, *, format: str = "tl-tunedlens", training: dict[str, Any] | None = None,
                    repo_type: str = "model", path_in_repo: str | None = None, revision: str | None = None,
                    private: bool | None = None, token: str | None = None,
                    commit_message: str | None = None) -> str:
        """Save the lens (``format``) and upload it to ``repo_id`` (created if needed); returns the commit URL."""
        return upload_lens(lambda folder: self.save(folder, training=training, format=format), repo_id,
                           repo_type=repo_type, path_in_repo=path_in_repo, revision=revision, private=private,
                           token=token, commit_message=commit_message)
