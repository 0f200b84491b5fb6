"""The reference ``tuned-lens`` package's artifacts (0.2.0), read and written without it.

A reference lens folder holds ``config.json`` (``base_model_name_or_path``, ``d_model``,
``num_hidden_layers``, ``bias``, ``base_model_revision``, ``unembed_hash`` -- older files spell
it ``unemebd_hash`` -- and ``lens_type: "linear_tuned_lens"``) and ``params.pt``: a pickled state
dict of a ``ModuleList`` of ``nn.Linear`` (keys ``0.weight``, ``0.bias``, ...), fp32 or fp16.
Reference translator ``i`` decodes ``hidden_states[i]`` = our lens layer ``i``.

``params.pt`` is only ever read with ``torch.load(weights_only=True)``: a pickle that tries to
build arbitrary objects (run code) is refused, not executed. Every config field is type-checked and
every tensor must be finite. The ``config.json`` we write also records ``params_sha256`` (the
reference package ignores the key, with a logged note), checked on load when present.

The reference's unembedding hash is ``sha256(numpy.array_str(W, precision=1))`` of its
``lm_head.weight`` (``[d_vocab, d_model]``, fp32) with numpy's default print options, i.e. the
corners of ``W`` rounded to one decimal. Hugging Face's ``lm_head.weight`` is TransformerLens's
``W_U.T`` only while the model is unprocessed (``fold_ln`` / ``center_unembed`` change ``W_U``).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.basis import rows_centred
from ..core.unembed import Unembed
from ..errors import LensError, UnembedMismatchError, first_line
from .files import write_failure_as_oserror, write_folder_atomic
from .native import check_finite_tensors, check_sha256, write_with_checksum

CONFIG_NAME = "config.json"
PARAMS_NAME = "params.pt"
LENS_TYPE = "linear_tuned_lens"
HUB_REPO_ID = "AlignmentResearch/tuned-lens"
HUB_REPO_TYPE = "space"
HUB_SUBFOLDER = "lens"
_NUMPY_DEFAULT_PRINT = dict(edgeitems=3, threshold=1000, floatmode="maxprec", suppress=False,
                            linewidth=75, nanstr="nan", infstr="inf", sign="-", formatter=None, legacy=False)


def is_reference_config(config: dict[str, Any]) -> bool:
    """True for a reference ``config.json``: ``lens_type`` ``"linear_tuned_lens"``, or (older files)
    ``d_model`` + ``num_hidden_layers`` without our ``format_version`` or a model's ``model_type``."""
    if "format_version" in config:
        return False
    if config.get("lens_type") == LENS_TYPE:
        return True
    return "d_model" in config and "num_hidden_layers" in config and "model_type" not in config


def parse_config(config: dict[str, Any], cfg_file: Path) -> dict[str, Any]:
    """Validate a reference config; returns ``n_layers``, ``d_model``, ``bias``, ``model_name``,
    ``revision``, ``unembed_hash`` (either spelling)."""
    lens_type = config.get("lens_type", LENS_TYPE)
    if lens_type != LENS_TYPE:
        raise LensError(f"{cfg_file} has lens_type {lens_type!r}; only {LENS_TYPE!r} reference lenses are supported")
    for key in ("d_model", "num_hidden_layers"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise LensError(f"{cfg_file}: {key} must be a positive integer, got {value!r}: fix or re-export the lens")
    if not isinstance(config.get("bias", True), bool):
        raise LensError(f"{cfg_file}: bias must be true or false, got {config['bias']!r}: fix or re-export the lens")
    for key in ("base_model_name_or_path", "base_model_revision", "unembed_hash", "unemebd_hash", "params_sha256"):
        if not isinstance(config.get(key), (str, type(None))):
            raise LensError(f"{cfg_file}: {key} must be a string or null, got {config[key]!r}: fix or re-export the lens")
    return {
        "n_layers": config["num_hidden_layers"],
        "d_model": config["d_model"],
        "bias": config.get("bias", True),
        "model_name": config.get("base_model_name_or_path") or None,
        "revision": config.get("base_model_revision"),
        "unembed_hash": config.get("unembed_hash") or config.get("unemebd_hash"),
        "params_sha256": config.get("params_sha256"),
    }


def read_params(params_file: Path, n_layers: int, d_model: int, bias: bool,
                sha256: str | None = None) -> dict[str, Tensor]:
    """Read ``params.pt`` safely and return it keyed like our lens (``translators.{i}.weight``...);
    its tensors must be finite and (when given) its bytes hash to ``sha256``."""
    if not params_file.is_file():
        raise LensError(f"{params_file} is missing: a tuned-lens folder needs {PARAMS_NAME} beside {CONFIG_NAME}")
    try:
        data = params_file.read_bytes()
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise LensError(
            f"{params_file} is not a plain tensor state dict and was not unpickled (weights_only=True refused "
            f"it: {first_line(err, 160)}): only load lenses from sources you trust, re-export it as tensors"
        ) from None
    except (EOFError, RuntimeError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise LensError(f"{params_file} is truncated or not a torch file ({first_line(err, 160)}): "
                        "re-download or re-export it") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise LensError(f"{params_file} must hold a state dict of tensors, got {type(state).__name__}: re-export it")
    expected = {}
    for i in range(n_layers):
        expected[f"{i}.weight"] = (d_model, d_model)
        if bias:
            expected[f"{i}.bias"] = (d_model,)
    missing = sorted(set(expected) - set(state), key=_natural)
    extra = sorted(set(state) - set(expected), key=_natural)
    if missing or extra:
        raise LensError(
            f"{params_file} does not match {CONFIG_NAME} (num_hidden_layers={n_layers}, bias={bias}): "
            f"missing {missing[:3]}, unexpected {extra[:3]}"
        )
    out = {}
    for key, shape in expected.items():
        tensor = state[key]
        if tuple(tensor.shape) != shape:
            raise LensError(f"{params_file}: {key} has shape {tuple(tensor.shape)}, expected {shape} (d_model={d_model})")
        if not tensor.is_floating_point():
            raise LensError(f"{params_file}: {key} has dtype {tensor.dtype}, expected a float tensor")
        out["translators." + key] = tensor
    check_finite_tensors(state, params_file)
    check_sha256(data, sha256, params_file)
    return out


def _natural(key: str) -> tuple:
    head, _, tail = key.partition(".")
    return (int(head) if head.isdigit() else -1, tail)


# --- the unembedding hash ----------------------------------------------------------------
def unembed_hash(hf_weight: Tensor) -> str:
    """The reference's hash of an ``lm_head.weight`` (``[d_vocab, d_model]``)."""
    array = hf_weight.detach().cpu().float().numpy()
    with np.printoptions(**_NUMPY_DEFAULT_PRINT):
        return hashlib.sha256(np.array_str(array, precision=1).encode()).hexdigest()


def _hf_weight(unembed: Unembed) -> Tensor:
    return unembed.unembed.W_U.detach().T


def unembed_is_processed(unembed: Unembed) -> bool:
    """True when ``W_U`` is not Hugging Face's ``lm_head.weight.T`` any more (``fold_ln`` folded the
    final norm into it, or ``center_unembed`` removed its mean over the vocabulary)."""
    if unembed.normalization_type in ("LNPre", "RMSPre"):
        return True
    return rows_centred(unembed.unembed.W_U)


def model_unembed_hash(unembed: Unembed) -> str | None:
    """The reference hash of this model's unembedding, or None when ``W_U`` was processed."""
    return None if unembed_is_processed(unembed) else unembed_hash(_hf_weight(unembed))


def check_unembed_hash(unembed: Unembed, recorded: str | None, what: str) -> None:
    """Compare a reference ``unembed_hash`` with the model's ``W_U``.

    A match at fp32, fp16 or bf16 rounding accepts; a mismatch on an unprocessed model raises
    ``UnembedMismatchError``; on a processed model the hash cannot be checked: warn."""
    if not recorded:
        return
    weight = _hf_weight(unembed)
    candidates = {unembed_hash(weight.to(dtype)) for dtype in (torch.float32, torch.float16, torch.bfloat16)}
    if recorded in candidates:
        return
    if unembed_is_processed(unembed):
        warnings.warn(
            f"{what} records the unembedding hash {recorded[:12]}…, which cannot be checked against a model "
            "loaded with fold_ln/center_unembed; load it with fold_ln=False, center_unembed=False to check it",
            stacklevel=3,
        )
        return
    raise UnembedMismatchError(
        f"{what} was trained for an unembedding with hash {recorded[:12]}… but the model's is "
        f"{unembed_hash(weight)[:12]}…: use the model the lens was trained on"
    )


# --- writing -------------------------------------------------------------------------------
def write_reference(folder: str | os.PathLike, params: dict[str, Tensor], *, d_model: int, n_layers: int,
                    model_name: str | None, unembed_hash_value: str | None) -> Path:
    """Write ``config.json`` + ``params.pt`` (keys ``{i}.weight``, ``{i}.bias``) all-or-nothing."""
    config = {
        "base_model_name_or_path": model_name or "",
        "d_model": d_model,
        "num_hidden_layers": n_layers,
        "bias": True,
        "base_model_revision": None,
        "unembed_hash": unembed_hash_value,
        "lens_type": LENS_TYPE,
    }
    params = {k: v.detach().cpu().contiguous().clone() for k, v in params.items()}
    check_finite_tensors(params, "this lens")
    def write_params(tmp: Path) -> None:
        with write_failure_as_oserror(Path(folder) / PARAMS_NAME, PARAMS_NAME):
            torch.save(params, tmp)

    return write_folder_atomic(folder, write_with_checksum(PARAMS_NAME, write_params, config, "params_sha256"))
