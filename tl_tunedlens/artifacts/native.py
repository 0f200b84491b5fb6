"""Our lens format: ``config.json`` + ``lens.safetensors`` in a folder.

``config.json`` records the format and its version, the model name, ``n_layers`` (the model's),
``d_model``, ``d_vocab``, the layer convention (the default, or ``"hook_names"`` for a lens on other
residual hook points, :mod:`tl_tunedlens.core.layers`) with the hook name of every lens layer,
``bias``, ``dtype``, the unembedding's identity (``unembed_hash``: sha256 of the raw parameters;
``unembed_fingerprint``: processing-invariant probe log-probs), the residual-stream kind the
translators were trained on (``"raw"`` = Hugging Face hidden states, or ``"centred"``, see
:mod:`tl_tunedlens.core.basis`) and training metadata (tokens seen, data, loss, steps...).
Both files are written all-or-nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import LensError, first_line
from .files import write_folder_atomic

if TYPE_CHECKING:
    from ..lens import TunedLens

FORMAT = "tl-tunedlens"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "lens.safetensors"
LAYER_CONVENTION = "resid_after_n_blocks"  # lens layer i = residual stream after i blocks
HOOKS_CONVENTION = "hook_names"            # lens layer i reads hook_names[i] (other residual hook points)
REQUIRED_KEYS = ("lens_type", "n_layers", "d_model", "d_vocab")


def lens_config(lens: "TunedLens", training: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` content describing ``lens``."""
    params = list(lens.parameters())
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "lens_type": lens.lens_type,
        "model_name": lens.model_name,
        "n_layers": lens.model_n_layers,
        "d_model": lens.d_model,
        "d_vocab": lens.d_vocab,
        "layer_convention": LAYER_CONVENTION if lens.default_convention else HOOKS_CONVENTION,
        "hook_names": lens.hook_names,
        "bias": lens.bias,
        "dtype": str(params[0].dtype).removeprefix("torch.") if params else None,
        "unembed_hash": lens.unembed_sha256,
        "unembed_fingerprint": lens.unembed_fingerprint,
        "residual_stream": lens.residual_stream,
        "reference_unembed_hash": lens.reference_unembed_hash,
        "training": dict(training if training is not None else lens.training_info),
    }


def save_lens(lens: "TunedLens", path: str | os.PathLike, training: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` and ``lens.safetensors`` into folder ``path`` (created if needed)."""
    path = Path(path)
    config = lens_config(lens, training)
    text = json.dumps(config, indent=2) + "\n"  # fails here (not half-way) on non-JSON metadata
    tensors = {k: v.detach().cpu().contiguous() for k, v in lens.state_dict().items()}
    writers = {}
    if tensors:
        writers[WEIGHTS_NAME] = lambda tmp: save_file(
            tensors, str(tmp), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    writers[CONFIG_NAME] = lambda tmp: tmp.write_text(text, encoding="utf-8")
    return write_folder_atomic(path, writers)


def read_json_config(path: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a lens folder (either format) as a dict; one-line errors otherwise."""
    path = Path(path)
    cfg_file = path / CONFIG_NAME
    if not path.is_dir():
        raise LensError(f"lens folder {path} does not exist: pass the folder written by lens.save()")
    if not cfg_file.is_file():
        raise LensError(f"{cfg_file} is missing: a lens folder needs config.json and {WEIGHTS_NAME} (or params.pt)")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LensError(f"{cfg_file} is not valid JSON ({err}): re-save the lens") from None
    if not isinstance(config, dict):
        raise LensError(f"{cfg_file} must hold a JSON object: re-save the lens")
    return config


def validate_config(config: dict[str, Any], cfg_file: Path) -> dict[str, Any]:
    """Check the format, version and required keys of one of our configs."""
    if "format_version" not in config:
        raise LensError(f"{cfg_file} is not a lens config (no format_version, not a tuned-lens config): "
                        "pass a folder written by lens.save() or by the tuned-lens package")
    fmt = config.get("format", FORMAT)
    if fmt != FORMAT:
        raise LensError(f"{cfg_file} has format {fmt!r}, not {FORMAT!r}: it was not written by tl_tunedlens")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise LensError(
            f"{cfg_file} has format_version {version!r}; this tl_tunedlens reads version {FORMAT_VERSION}: "
            "upgrade tl_tunedlens or re-save the lens"
        )
    for key in REQUIRED_KEYS:
        if key not in config:
            raise LensError(f"{cfg_file} lacks the key {key!r}: re-save the lens")
    for key in ("n_layers", "d_model", "d_vocab"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "n_layers" else 1):
            raise LensError(f"{cfg_file}: {key} must be a positive integer, got {value!r}: re-save the lens")
    convention = config.get("layer_convention", LAYER_CONVENTION)
    if convention not in (LAYER_CONVENTION, HOOKS_CONVENTION):
        raise LensError(f"{cfg_file} has layer_convention {convention!r}, expected {LAYER_CONVENTION!r} "
                        f"or {HOOKS_CONVENTION!r}")
    names = config.get("hook_names")
    if convention == HOOKS_CONVENTION and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise LensError(f"{cfg_file}: layer_convention {HOOKS_CONVENTION!r} needs a list of hook_names: re-save the lens")
    return config


def config_hook_names(config: dict[str, Any]) -> list[str] | None:
    """The hook names a validated config's lens reads, or ``None`` for the default convention."""
    return config["hook_names"] if config.get("layer_convention") == HOOKS_CONVENTION else None


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
        raise LensError(f"{weights_file} is truncated or not a safetensors file ({first_line(err, 160)}): "
                        "re-save the lens") from None
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise LensError(
            f"{weights_file} does not match config.json: missing {missing[:3]}, unexpected {extra[:3]}: re-save the lens"
        )
    for key, ref in expected.items():
        if tuple(tensors[key].shape) != tuple(ref.shape):
            raise LensError(
                f"{weights_file}: {key} has shape {tuple(tensors[key].shape)}, expected {tuple(ref.shape)}: re-save the lens"
            )
    return tensors
