"""Lens artifacts end to end: save in either format, load from a folder or the hub, push.

Formats: ``"tl-tunedlens"`` (ours, :mod:`tl_tunedlens.io`) and ``"tuned-lens"`` (the reference
package's, :mod:`tl_tunedlens.reference_format`). Loading detects the format from ``config.json``.
Every check happens before a lens is built; errors are one line naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import io, reference_format as ref
from .errors import LensError
from .hub import download_lens
from .residual_basis import CENTRED, RAW, centred_to_raw_weight, check_transfer, kind_from_unembed_cfg, residual_stream_kind

FORMATS = ("tl-tunedlens", "tuned-lens")


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise LensError(f"unknown lens format {format!r}: use one of {FORMATS}")


# --- saving ---------------------------------------------------------------------------------
def save(lens, path: str | os.PathLike, *, format: str = "tl-tunedlens", training: dict[str, Any] | None = None) -> Path:
    """Write ``lens`` into folder ``path`` in ``format``; all-or-nothing."""
    _check_format(format)
    path = Path(path)
    other = ref.PARAMS_NAME if format == "tl-tunedlens" else io.WEIGHTS_NAME
    if (path / other).exists():
        raise LensError(f"{path} already holds {other} (a lens in the other format): save into an empty folder")
    if format == "tl-tunedlens":
        return io.save_lens(lens, path, training)
    return _save_reference(lens, path)


def _save_reference(lens, path: Path) -> Path:
    """Reference format. A centred-stream lens is converted exactly to the raw stream (``A P``);
    ``bias=False`` is written as zero biases (the reference cannot build bias-free lenses)."""
    kind = getattr(lens, "residual_stream", None) or kind_from_unembed_cfg(getattr(lens.unembed.unembed, "cfg", None))
    if kind is None:
        raise LensError(
            "cannot tell whether this lens was trained on a mean-centred residual stream: create it with "
            "TunedLens.from_model(model) or TunedLens.load(...), which record it, before saving as 'tuned-lens'"
        )
    params = {}
    for i, translator in enumerate(lens.translators):
        weight = translator.weight.detach()
        params[f"{i}.weight"] = centred_to_raw_weight(weight) if kind == CENTRED else weight
        params[f"{i}.bias"] = translator.bias.detach() if translator.bias is not None else torch.zeros_like(weight[0])
    hash_value = getattr(lens, "reference_unembed_hash", None) or ref.model_unembed_hash(lens.unembed)
    return ref.write_reference(path, params, d_model=lens.d_model, n_layers=lens.n_layers,
                               model_name=lens.model_name, unembed_hash_value=hash_value)


# --- loading --------------------------------------------------------------------------------
def load(cls, path: str | os.PathLike, model: nn.Module, *, dtype: torch.dtype | None = None, source: str | None = None):
    """Load the lens in folder ``path`` (either format) for ``model``."""
    path = Path(path)
    config = io.read_json_config(path)
    what = f"the lens in {source or path}"
    weights_present = [name for name in (io.WEIGHTS_NAME, ref.PARAMS_NAME) if (path / name).is_file()]
    if len(weights_present) > 1:
        raise LensError(f"{path} holds both {weights_present[0]} and {weights_present[1]}: remove the stale one")
    unembed, n_layers, name = cls._model_facts(model)
    model_kind = residual_stream_kind(model)
    if ref.is_reference_config(config):
        rc = ref.parse_config(config, path / ref.CONFIG_NAME)
        _check_shape(path / ref.CONFIG_NAME, rc["n_layers"], rc["d_model"], n_layers, unembed.d_model)
        check_transfer(RAW, model_kind, what)
        ref.check_unembed_hash(unembed, rc["unembed_hash"], what)
        lens = cls(unembed, n_layers, bias=rc["bias"], dtype=dtype, model_name=rc["model_name"] or name)
        tensors = ref.read_params(path / ref.PARAMS_NAME, rc["n_layers"], rc["d_model"], rc["bias"])
        lens.load_state_dict(tensors)
        lens.residual_stream = RAW
        lens.reference_unembed_hash = rc["unembed_hash"]
        lens.training_info = {"source_format": "tuned-lens", "base_model_name_or_path": rc["model_name"],
                              "base_model_revision": rc["revision"]}
        return lens
    cfg_file = path / io.CONFIG_NAME
    config = io.validate_config(config, cfg_file)
    if config["lens_type"] != cls.lens_type:
        raise LensError(f"{cfg_file} holds a {config['lens_type']!r}, not a {cls.lens_type!r}")
    _check_shape(cfg_file, config["n_layers"], config["d_model"], n_layers, unembed.d_model)
    unembed.check(d_model=config["d_model"], d_vocab=config["d_vocab"], sha256=config.get("unembed_hash"),
                  fingerprint=config.get("unembed_fingerprint"), what=what)
    lens_kind = config.get("residual_stream")
    check_transfer(lens_kind, model_kind, what)
    saved_dtype = getattr(torch, str(config.get("dtype") or "float32"), None)
    if not isinstance(saved_dtype, torch.dtype) or not saved_dtype.is_floating_point:
        raise LensError(f"{cfg_file}: unknown dtype {config.get('dtype')!r}: re-save the lens")
    lens = cls(unembed, n_layers, bias=bool(config.get("bias", True)), dtype=dtype or saved_dtype,
               model_name=config.get("model_name") or name)
    tensors = io.read_weights(path, lens.state_dict())
    if lens_kind == CENTRED and model_kind == RAW:  # exact conversion, see residual_basis
        tensors = {k: centred_to_raw_weight(v) if k.endswith(".weight") else v for k, v in tensors.items()}
    lens.load_state_dict(tensors)
    lens.residual_stream = model_kind if lens_kind is not None else None
    lens.reference_unembed_hash = config.get("reference_unembed_hash")
    lens.training_info = dict(config.get("training") or {})
    return lens


def _check_shape(cfg_file: Path, lens_layers: int, lens_d_model: int, n_layers: int, d_model: int) -> None:
    if lens_layers != n_layers or lens_d_model != d_model:
        raise LensError(
            f"{cfg_file} is for n_layers={lens_layers}, d_model={lens_d_model} but the model has "
            f"n_layers={n_layers}, d_model={d_model}: load it with the model it was trained on"
        )


def _looks_local(path_or_repo_id: str | os.PathLike) -> bool:
    text = os.fspath(path_or_repo_id)
    return (isinstance(path_or_repo_id, os.PathLike) or Path(text).exists()
            or text.startswith((".", "/", "~", "\\")) or os.path.isabs(text) or text.count("/") > 1)


def from_pretrained(cls, path_or_repo_id: str | os.PathLike, model: nn.Module, *, revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None, dtype: torch.dtype | None = None,
                    repo_type: str | None = None, subfolder: str | None = None, token: str | bool | None = None):
    """A local folder, else a hub repo (ours or the reference's space); see :mod:`tl_tunedlens.hub`."""
    if _looks_local(path_or_repo_id):
        return load(cls, Path(path_or_repo_id).expanduser(), model, dtype=dtype)
    folder = download_lens(str(path_or_repo_id), revision=revision, cache_dir=cache_dir,
                           repo_type=repo_type, subfolder=subfolder, token=token)
    return load(cls, folder, model, dtype=dtype, source=f"{path_or_repo_id} ({folder})")
