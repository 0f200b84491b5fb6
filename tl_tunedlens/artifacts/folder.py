"""A lens folder end to end: save in either format, load from a folder or the hub.

Formats: ``"tl-tunedlens"`` (ours, :mod:`.native`) and ``"tuned-lens"`` (the reference package's,
:mod:`.reference`). Loading detects the format from ``config.json``. Every check happens before
a lens is built; errors are one line naming the file. The lens class is passed in (``cls``), so
this chapter never imports :mod:`tl_tunedlens.lens`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..core.backend import Model, model_facts
from ..core.basis import CENTRED, RAW, centred_to_raw_weight, check_transfer, kind_from_normalization, residual_stream_kind
from ..core.unembed import Unembed
from ..errors import LensError
from . import native, reference as ref
from .hub import download_lens

if TYPE_CHECKING:
    from ..lens import TunedLens

FORMATS = ("tl-tunedlens", "tuned-lens")


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise LensError(f"unknown lens format {format!r}: use one of {FORMATS}")


# --- saving ---------------------------------------------------------------------------------
def save(lens: "TunedLens", path: str | os.PathLike, *, format: str = "tl-tunedlens",
         training: dict[str, Any] | None = None) -> Path:
    """Write ``lens`` into folder ``path`` in ``format``; all-or-nothing."""
    _check_format(format)
    if format == "tuned-lens" and not lens.default_convention:
        raise LensError("the tuned-lens format only holds lenses on the default hook points (resid_pre/resid_post): "
                        "save this lens with format='tl-tunedlens'")
    path = Path(path)
    other = ref.PARAMS_NAME if format == "tl-tunedlens" else native.WEIGHTS_NAME
    if (path / other).exists():
        raise LensError(f"{path} already holds {other} (a lens in the other format): save into an empty folder")
    if format == "tl-tunedlens":
        return native.save_lens(lens, path, training)
    return _save_reference(lens, path)


def _save_reference(lens: "TunedLens", path: Path) -> Path:
    """Reference format. A centred-stream lens is converted exactly to the raw stream (``A P``);
    ``bias=False`` is written as zero biases (the reference cannot build bias-free lenses)."""
    kind = lens.residual_stream or kind_from_normalization(lens.unembed.normalization_type)
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
    hash_value = lens.reference_unembed_hash or ref.model_unembed_hash(lens.unembed)
    return ref.write_reference(path, params, d_model=lens.d_model, n_layers=lens.n_layers,
                               model_name=lens.model_name, unembed_hash_value=hash_value)


# --- loading --------------------------------------------------------------------------------
def check_folder(path: str | os.PathLike, *, allow_unverified: bool = False) -> dict[str, Any]:
    """The checks of a lens folder that need no model (config fields and types, one weights file, a
    model identity to check against); returns its config. What the CLI runs before loading a model."""
    path = Path(path)
    config = native.read_json_config(path)
    weights_present = [name for name in (native.WEIGHTS_NAME, ref.PARAMS_NAME) if (path / name).is_file()]
    if len(weights_present) > 1:
        raise LensError(f"{path} holds both {weights_present[0]} and {weights_present[1]}: remove the stale one")
    cfg_file = path / native.CONFIG_NAME
    if ref.is_reference_config(config):
        ref.parse_config(config, cfg_file)
        return config
    config = native.validate_config(config, cfg_file)
    if config.get("unembed_hash") is None and config.get("unembed_fingerprint") is None and not allow_unverified:
        raise LensError(f"{cfg_file} records no model identity (neither unembed_hash nor unembed_fingerprint), so "
                        "nothing can check it belongs to this model: re-save it with lens.save() from its model, or "
                        "load it with allow_unverified=True if you trust it")
    if (path / native.WEIGHTS_NAME).is_file() and config.get("weights_sha256") is None and not allow_unverified:
        raise LensError(f"{cfg_file} records no weights_sha256, so a corrupted or changed {native.WEIGHTS_NAME} would "
                        "load unnoticed: re-save it with lens.save(), or load it with allow_unverified=True if you "
                        "trust it")
    return config


def load(cls: type["TunedLens"], path: str | os.PathLike, model: Model, *,
         dtype: torch.dtype | None = None, source: str | None = None, allow_unverified: bool = False) -> "TunedLens":
    """Load the lens in folder ``path`` (either format) for ``model``; see :mod:`tl_tunedlens.artifacts.native` for what is
    checked (``allow_unverified``: accept a native config that records no model identity or no
    ``weights_sha256``)."""
    path = Path(path)
    config = check_folder(path, allow_unverified=allow_unverified)
    what = f"the lens in {source or path}"
    facts = model_facts(model)
    unembed = Unembed(model)
    model_kind = residual_stream_kind(model)
    if ref.is_reference_config(config):
        return _load_reference(cls, path, config, unembed, facts.n_layers, model_kind, what, dtype, facts.model_name)
    cfg_file = path / native.CONFIG_NAME
    if config["lens_type"] != cls.lens_type:
        raise LensError(f"{cfg_file} holds a {config['lens_type']!r}, not a {cls.lens_type!r}")
    _check_shape(cfg_file, config["n_layers"], config["d_model"], facts.n_layers, unembed.d_model)
    unembed.check(d_model=config["d_model"], d_vocab=config["d_vocab"], sha256=config.get("unembed_hash"),
                  fingerprint=config.get("unembed_fingerprint"), what=what)
    lens_kind = config.get("residual_stream")
    check_transfer(lens_kind, model_kind, what)
    saved_dtype = getattr(torch, str(config.get("dtype") or "float32"), None)
    if not isinstance(saved_dtype, torch.dtype) or not saved_dtype.is_floating_point:
        raise LensError(f"{cfg_file}: unknown dtype {config.get('dtype')!r}: re-save the lens")
    lens = cls(unembed, facts.n_layers, bias=config.get("bias", True), dtype=dtype or saved_dtype,
               model_name=config.get("model_name") or facts.model_name,
               residual_stream=model_kind if lens_kind is not None else None,
               reference_unembed_hash=config.get("reference_unembed_hash"),
               training_info=config.get("training") or {}, hook_names=native.config_hook_names(config))
    tensors = native.read_weights(path, lens.state_dict(), config.get("weights_sha256"))
    if lens_kind == CENTRED and model_kind == RAW:  # exact conversion, see core.basis
        tensors = {k: centred_to_raw_weight(v) if k.endswith(".weight") else v for k, v in tensors.items()}
    lens.load_state_dict(tensors)
    return lens


def _load_reference(cls: type["TunedLens"], path: Path, config: dict[str, Any], unembed: Unembed, n_layers: int,
                    model_kind: str, what: str, dtype: torch.dtype | None, model_name: str | None) -> "TunedLens":
    """A reference ``config.json`` + ``params.pt``: always trained on the raw (Hugging Face) stream."""
    rc = ref.parse_config(config, path / ref.CONFIG_NAME)
    _check_shape(path / ref.CONFIG_NAME, rc["n_layers"], rc["d_model"], n_layers, unembed.d_model)
    check_transfer(RAW, model_kind, what)
    ref.check_unembed_hash(unembed, rc["unembed_hash"], what)
    lens = cls(unembed, n_layers, bias=rc["bias"], dtype=dtype, model_name=rc["model_name"] or model_name,
               residual_stream=RAW, reference_unembed_hash=rc["unembed_hash"],
               training_info={"source_format": "tuned-lens", "base_model_name_or_path": rc["model_name"],
                              "base_model_revision": rc["revision"]})
    lens.load_state_dict(ref.read_params(path / ref.PARAMS_NAME, rc["n_layers"], rc["d_model"], rc["bias"],
                                         rc["params_sha256"]))
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


def from_pretrained(cls: type["TunedLens"], path_or_repo_id: str | os.PathLike, model: Model, *,
                    revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                    dtype: torch.dtype | None = None, repo_type: str | None = None, subfolder: str | None = None,
                    token: str | bool | None = None, allow_unverified: bool = False) -> "TunedLens":
    """A local folder, else a hub repo (ours or the reference's space); see :mod:`.hub`."""
    if _looks_local(path_or_repo_id):
        return load(cls, Path(path_or_repo_id).expanduser(), model, dtype=dtype, allow_unverified=allow_unverified)
    folder = download_lens(str(path_or_repo_id), revision=revision, cache_dir=cache_dir,
                           repo_type=repo_type, subfolder=subfolder, token=token)
    return load(cls, folder, model, dtype=dtype, source=f"{path_or_repo_id} ({folder})",
                allow_unverified=allow_unverified)
