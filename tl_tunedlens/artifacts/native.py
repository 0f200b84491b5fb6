"""Our lens format: ``config.json`` + ``lens.safetensors`` in a folder.

``config.json`` records the format and its version, the model name, ``n_layers`` (the model's),
``d_model``, ``d_vocab``, the layer convention (the default, or ``"hook_names"`` for a lens on other
residual hook points, :mod:`tl_tunedlens.core.layers`) with the hook name of every lens layer,
``bias``, ``dtype``, the unembedding's identity (``unembed_hash``: sha256 of the raw parameters;
``unembed_fingerprint``: processing-invariant probe log-probs), the residual-stream kind the
translators were trained on (``"raw"`` = Hugging Face hidden states, or ``"centred"``, see
:mod:`tl_tunedlens.core.basis`), training metadata (tokens seen, data, loss, steps...) and
``weights_sha256``, the SHA-256 of ``lens.safetensors``'s bytes. Both files are written
all-or-nothing, as strict JSON (no NaN).

Loading checks, each a one-line error naming the file: every config field's type
(``FIELD_TYPES``), the weights' keys and shapes, that every tensor is finite (by name), and the
weights file's SHA-256 against the config's (a flipped byte is caught); a config that records no
model identity (neither ``unembed_hash`` nor ``unembed_fingerprint``), or a weights file but no
``weights_sha256`` (deleting the key must not turn the corruption check off), is refused unless the caller
opts in (``allow_unverified=True``, see :func:`~tl_tunedlens.artifacts.folder.load`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes, save_file

from ..core.basis import CENTRED, RAW
from ..errors import LensError, first_line
from .files import strict_json, write_failure_as_oserror, write_folder_atomic

if TYPE_CHECKING:
    from ..lens import TunedLens

FORMAT = "tl-tunedlens"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "lens.safetensors"
LAYER_CONVENTION = "resid_after_n_blocks"  # lens layer i = residual stream after i blocks
HOOKS_CONVENTION = "hook_names"            # lens layer i reads hook_names[i] (other residual hook points)
REQUIRED_KEYS = ("lens_type", "n_layers", "d_model", "d_vocab")
_HEX64 = "a 64-digit hex string"
#: each config field: (what it must be, its check); ``None`` is allowed where the check says so
FIELD_TYPES: dict[str, tuple[str, Any]] = {
    "format": ("a string", lambda v: isinstance(v, str)),
    "lens_type": ("a string", lambda v: isinstance(v, str)),
    "model_name": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "layer_convention": ("a string", lambda v: isinstance(v, str)),
    "hook_names": ("a list of hook names", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "bias": ("true or false", lambda v: isinstance(v, bool)),
    "dtype": ("a dtype name or null", lambda v: v is None or isinstance(v, str)),
    "unembed_hash": (f"{_HEX64} or null", lambda v: v is None or _is_hex64(v)),
    "unembed_fingerprint": ("a list of finite numbers or null", lambda v: v is None or (
        isinstance(v, list) and len(v) > 0 and all(_is_number(x) for x in v))),
    "residual_stream": (f"{RAW!r}, {CENTRED!r} or null", lambda v: v in (RAW, CENTRED, None)),
    "reference_unembed_hash": (f"{_HEX64} or null", lambda v: v is None or _is_hex64(v)),
    "training": ("an object or null", lambda v: v is None or isinstance(v, dict)),
    "weights_sha256": (f"{_HEX64} or null", lambda v: v is None or _is_hex64(v)),
}


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_finite_tensors(tensors: Mapping[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Raise a one-line error naming the first tensor of ``tensors`` that holds NaN or inf."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise LensError(f"{source}: {name} holds {bad} non-finite value(s) (NaN/inf): the lens is broken; "
                            "retrain it or use another copy")


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of the file at ``path`` as hex, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_with_checksum(weights_name: str, write_weights, config: dict[str, Any], sha_key: str):
    """The ``write_folder_atomic`` writers of a weights file and of ``config.json`` recording its SHA-256
    under ``sha_key`` (the weights are written first, then hashed; the config's JSON is checked now)."""
    strict_json(config, "the lens config")  # fails here, before anything is written
    digest: dict[str, str] = {}

    def weights(tmp: Path) -> None:
        write_weights(tmp)
        digest["sha256"] = file_sha256(tmp)

    def config_file(tmp: Path) -> None:
        tmp.write_text(strict_json({**config, sha_key: digest["sha256"]}, "the lens config") + "\n", encoding="utf-8")

    return {weights_name: weights, CONFIG_NAME: config_file}


def check_sha256(data: bytes, recorded: str | None, source: str | os.PathLike) -> None:
    """Raise a one-line error if ``data`` does not hash to ``recorded`` (no check when ``None``)."""
    if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
        raise LensError(f"{source} does not match the SHA-256 recorded in {CONFIG_NAME} "
                        f"({recorded[:12]}…): the file is corrupted or was changed; re-save or re-download the lens")


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
    """Write ``config.json`` and ``lens.safetensors`` into folder ``path`` (created if needed); a lens
    with a non-finite weight is refused (nothing written)."""
    path = Path(path)
    config = lens_config(lens, training)
    tensors = {k: v.detach().cpu().contiguous() for k, v in lens.state_dict().items()}
    check_finite_tensors(tensors, "this lens")
    if not tensors:  # no translators: a config alone
        text = strict_json(config, "the lens config") + "\n"
        return write_folder_atomic(path, {CONFIG_NAME: lambda tmp: tmp.write_text(text, encoding="utf-8")})
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    def weights(tmp: Path) -> None:
        with write_failure_as_oserror(path / WEIGHTS_NAME, WEIGHTS_NAME):
            save_file(tensors, str(tmp), metadata=metadata)

    return write_folder_atomic(path, write_with_checksum(WEIGHTS_NAME, weights, config, "weights_sha256"))


def read_json_config(path: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a lens folder (either format) as a dict; one-line errors otherwise."""
    path = Path(path)
    cfg_file = path / CONFIG_NAME
    if not path.is_dir():
        raise LensError(f"lens folder {path} does not exist: pass the folder written by lens.save()")
    if not cfg_file.is_file():
        raise LensError(f"{cfg_file} is missing: a lens folder needs config.json and {WEIGHTS_NAME} (or params.pt)")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as err:
        raise LensError(f"{cfg_file} is not valid JSON ({err}): re-save the lens") from None
    if not isinstance(config, dict):
        raise LensError(f"{cfg_file} must hold a JSON object: re-save the lens")
    return config


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def validate_config(config: dict[str, Any], cfg_file: Path) -> dict[str, Any]:
    """Check the format, version, required keys and the type of every field (``FIELD_TYPES``) of one of our configs."""
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
    for key, (what, ok) in FIELD_TYPES.items():
        if key in config and not ok(config[key]):
            raise LensError(f"{cfg_file}: {key} must be {what}, got {_short(config[key])}: fix it or re-save the lens")
    convention = config.get("layer_convention", LAYER_CONVENTION)
    if convention not in (LAYER_CONVENTION, HOOKS_CONVENTION):
        raise LensError(f"{cfg_file} has layer_convention {convention!r}, expected {LAYER_CONVENTION!r} "
                        f"or {HOOKS_CONVENTION!r}")
    if convention == HOOKS_CONVENTION and not isinstance(config.get("hook_names"), list):
        raise LensError(f"{cfg_file}: layer_convention {HOOKS_CONVENTION!r} needs a list of hook_names: re-save the lens")
    return config


def config_hook_names(config: dict[str, Any]) -> list[str] | None:
    """The hook names a validated config's lens reads, or ``None`` for the default convention."""
    return config["hook_names"] if config.get("layer_convention") == HOOKS_CONVENTION else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_weights(path: str | os.PathLike, expected: dict[str, torch.Tensor],
                 sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load ``lens.safetensors`` and check it has exactly the keys and shapes of ``expected``, finite
    values, and (when given) the SHA-256 ``sha256``."""
    weights_file = Path(path) / WEIGHTS_NAME
    if not expected:
        return {}
    if not weights_file.is_file():
        raise LensError(f"{weights_file} is missing: a tuned-lens folder needs {WEIGHTS_NAME} beside config.json")
    try:
        data = weights_file.read_bytes()
        tensors = load_bytes(data)
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
    check_finite_tensors(tensors, weights_file)
    check_sha256(data, sha256, weights_file)
    return tensors
