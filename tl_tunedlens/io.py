"""Saving and loading lenses: ``config.json`` + ``lens.safetensors`` in a folder.

``lens.save(dir)`` writes both files atomically (a failure leaves no half-written file);
``TunedLens.load(dir, model)`` restores the lens exactly and refuses a model whose
unembedding, ``n_layers`` or ``d_model`` differ.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._files import atomic_path, write_json_atomic
from .errors import LensError

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "lens.safetensors"
LAYER_CONVENTION = "resid_after_n_blocks"  # lens layer i = residual stream after i blocks


def lens_config(lens, training: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` content describing ``lens``."""
    params = list(lens.parameters())
    return {
        "format": "tl-tunedlens",
        "format_version": FORMAT_VERSION,
        "lens_type": lens.lens_type,
        "model_name": lens.model_name,
        "n_layers": lens.n_layers,
        "d_model": lens.d_model,
        "d_vocab": lens.d_vocab,
        "layer_convention": LAYER_CONVENTION,
        "hook_names": lens.hook_names,
        "bias": getattr(lens, "bias", False),
        "dtype": str(params[0].dtype).removeprefix("torch.") if params else None,
        "unembed_hash": lens.unembed_sha256,
        "unembed_fingerprint": lens.unembed_fingerprint,
        "training": dict(training if training is not None else getattr(lens, "training_info", {}) or {}),
    }


def save_lens(lens, path: str | os.PathLike, training: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` and ``lens.safetensors`` into folder ``path`` (created if needed)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LensError(f"cannot save a lens to {path}: it is a file, not a folder; pass a folder path")
    config = lens_config(lens, training)
    tensors = {k: v.detach().cpu().contiguous() for k, v in lens.state_dict().items()}
    if tensors:
        with atomic_path(path / WEIGHTS_NAME) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt", "format_version": str(FORMAT_VERSION)})
    write_json_atomic(path / CONFIG_NAME, config)
    return path


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``config.json`` of a saved lens folder."""
    path = Path(path)
    cfg_file = path / CONFIG_NAME
    if not path.is_dir():
        raise LensError(f"lens folder {path} does not exist: pass the folder written by lens.save()")
    if not cfg_file.is_file():
        raise LensError(f"{cfg_file} is missing: a lens folder needs config.json and {WEIGHTS_NAME}")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LensError(f"{cfg_file} is not valid JSON ({err}): re-save the lens") from None
    if not isinstance(config, dict):
        raise LensError(f"{cfg_file} must hold a JSON object: re-save the lens")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise LensError(
            f"{cfg_file} has format_version {version!r}; this tl_tunedlens reads version {FORMAT_VERSION}: "
            "upgrade tl_tunedlens or re-save the lens"
        )
    for key in ("lens_type", "n_layers", "d_model", "d_vocab"):
        if key not in config:
            raise LensError(f"{cfg_file} lacks the key {key!r}: re-save the lens")
    return config


def read_weights(path: str | os.PathLike, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Load ``lens.safetensors`` and check it has exactly the keys and shapes of ``expected``."""
    weights_file = Path(path) / WEIGHTS_NAME
    if not expected:
        return {}
    if not weights_file.is_file():
        raise LensError(f"{weights_file} is missing: a tuned-lens folder needs {WEIGHTS_NAME} beside config.json")
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError) as err:
        raise LensError(f"{weights_file} is not a readable safetensors file ({err}): re-save the lens") from None
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise LensError(
            f"{weights_file} does not match the config: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for key, ref in expected.items():
        if tuple(tensors[key].shape) != tuple(ref.shape):
            raise LensError(
                f"{weights_file}: {key} has shape {tuple(tensors[key].shape)}, expected {tuple(ref.shape)}"
            )
    return tensors
