"""Jacobian lenses (TransformerLens's ``JacobianLens``, Gurnee et al. 2026) as lenses of ours, both ways.

TL's artifact (``JacobianLens.save``, the ``anthropics/jacobian-lens`` format) is a ``torch.save`` of
``{"J": {l: [d_model, d_model]}, "n_prompts": int, "source_layers": [l, ...], "d_model": int}`` plus an
optional ``"metadata"`` dict, fp16 matrices by default. ``J[l]`` maps the output of block ``l``
(``blocks.{l}.hook_out`` = ``blocks.{l}.hook_resid_post``, our lens layer ``l + 1``) to the final block's
output before the final norm, read as ``W_U norm(J[l] h) + b_U``: a tuned lens with translator
``A = J - I`` and no bias. Source layers are ``0..n_layers-2``; ``J = I`` is the logit lens.

Reading (:func:`read_jacobian_lens`) takes a ``JacobianLens`` object (its attributes only, so
TransformerLens is not imported) or the path of its ``.pt`` file, read with
``torch.load(weights_only=True)`` and checked field by field (one-line ``LensError``s). Writing
(:func:`write_jacobian_lens`) produces a file ``JacobianLens.load`` reads; :func:`jacobian_lens_object`
builds the TL object itself (``transformer_lens.tools.analysis``: TransformerLens 3.9 and 4.x, imported
only then).
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..core.basis import CENTRED, HOW_TO_LOAD_RAW
from ..core.interventions import affine_parts
from ..errors import LensError, first_line
from .files import atomic_path
from .native import check_finite_tensors

if TYPE_CHECKING:
    from ..lens import Lens, TunedLens

KEYS = ("J", "n_prompts", "source_layers", "d_model")
OBJECT = "a JacobianLens object"


@dataclass
class JacobianLensData:
    """A Jacobian lens's content: ``matrices`` (J-lens layer ``l`` -> ``J[l]``, ``[d_model d_model]``, fp32 on
    the CPU), ``n_prompts`` averaged into the fit, ``d_model``, TL's ``metadata`` and where it was read from."""

    matrices: dict[int, Float[Tensor, "d_model d_model"]]
    n_prompts: int
    d_model: int
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = OBJECT

    @property
    def source_layers(self) -> list[int]:
        """The J-lens layers, ascending (lens layers one higher)."""
        return sorted(self.matrices)

    def check_model(self, n_layers: int, d_model: int) -> None:
        """Raise a one-line error unless this J-lens fits a model of ``n_layers`` blocks and width ``d_model``."""
        if d_model != self.d_model:
            raise LensError(f"{self.source} was fitted for d_model={self.d_model} but the model has d_model={d_model}: "
                            "use the model it was fitted on")
        bad = [layer for layer in self.source_layers if layer > n_layers - 2]
        if bad:
            raise LensError(f"{self.source} has source layer {bad[0]} but a {n_layers}-block model has J-lens layers "
                            f"0..{n_layers - 2}: use the model it was fitted on")
        target = self.metadata.get("target_layer", n_layers - 1)
        if target != n_layers - 1:
            raise LensError(f"{self.source} targets block {target}, not the final block {n_layers - 1}: only "
                            "final-block J-lenses are lenses; refit it without a custom target layer")


def read_jacobian_lens(jl_or_path: Any) -> JacobianLensData:
    """The content of a ``JacobianLens`` object or of its ``.pt`` artifact at a path, checked (module docstring)."""
    if isinstance(jl_or_path, (str, os.PathLike)):
        return _parse(_load(Path(jl_or_path)), str(jl_or_path))
    if all(hasattr(jl_or_path, name) for name in ("jacobians", "n_prompts", "d_model")):
        jacobians = jl_or_path.jacobians
        return _parse({"J": jacobians, "n_prompts": jl_or_path.n_prompts, "d_model": jl_or_path.d_model,
                       "source_layers": sorted(jacobians) if isinstance(jacobians, dict) else None,
                       "metadata": getattr(jl_or_path, "metadata", None)}, OBJECT)
    raise LensError(f"expected a JacobianLens or the path of its .pt file, got {type(jl_or_path).__name__}")


def _load(path: Path) -> Any:
    if not path.is_file():
        raise LensError(f"no J-lens file at {path}: pass the .pt file written by JacobianLens.save")
    if not zipfile.is_zipfile(path):   # torch.save writes a zip archive
        raise LensError(f"{path} is truncated or not a torch file: re-download or re-save it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise LensError(f"{path} holds more than tensors and plain values and was not unpickled (weights_only=True "
                        f"refused it: {first_line(err, 120)}): re-save it with JacobianLens.save") from None
    except (EOFError, RuntimeError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise LensError(f"{path} is truncated or not a torch file ({first_line(err, 120)}): re-download or re-save it") from None


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _parse(payload: Any, source: str) -> JacobianLensData:
    if not isinstance(payload, dict):
        raise LensError(f"{source} holds a {type(payload).__name__}, not a J-lens dict: pass a JacobianLens.save file")
    if "J" not in payload and "jacobian_sum" in payload:
        raise LensError(f"{source} is a J-lens fit checkpoint, not an artifact: load it with JacobianLens.load and "
                        "pass the object")
    missing = [key for key in ("J", "d_model") if key not in payload]
    if missing:
        raise LensError(f"{source} lacks the key {missing[0]!r} of a J-lens artifact ({', '.join(KEYS)}): "
                        "pass a file written by JacobianLens.save")
    d_model, n_prompts, metadata = payload["d_model"], payload.get("n_prompts", 0), payload.get("metadata") or {}
    if not _is_int(d_model, 1) or not _is_int(n_prompts, 0) or not isinstance(metadata, dict):
        raise LensError(f"{source}: d_model must be a positive integer, n_prompts a non-negative one and metadata a "
                        f"dict, got {d_model!r}, {n_prompts!r}, {type(metadata).__name__}: re-save the J-lens")
    jacobians = payload["J"]
    if not isinstance(jacobians, dict) or not jacobians:
        raise LensError(f"{source}: J must map layers to [d_model, d_model] matrices and hold at least one: re-save it")
    matrices = {}
    for layer, matrix in jacobians.items():
        if not _is_int(layer, 0) or not isinstance(matrix, Tensor) or not matrix.is_floating_point() \
                or tuple(matrix.shape) != (d_model, d_model):
            shape = tuple(matrix.shape) if isinstance(matrix, Tensor) else type(matrix).__name__
            raise LensError(f"{source}: J[{layer!r}] must be a float [{d_model}, {d_model}] matrix at a layer >= 0, "
                            f"got {shape}: re-save the J-lens")
        matrices[layer] = matrix.detach().float().cpu()
    check_finite_tensors({f"J[{layer}]": m for layer, m in matrices.items()}, source)
    listed = payload.get("source_layers")
    if listed is not None and sorted(listed) != sorted(matrices):
        raise LensError(f"{source}: source_layers {list(listed)} do not match the layers of J {sorted(matrices)}: "
                        "re-save the J-lens")
    return JacobianLensData(dict(sorted(matrices.items())), n_prompts, d_model, dict(metadata), source)


def _check_metadata(value: Any, where: str = "metadata") -> None:
    """TL's rule: ``None``, bool, int, float, str, lists, tuples and string-keyed dicts only (``weights_only`` reloads them)."""
    if value is None or type(value) in (bool, int, float, str):
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_metadata(item, f"{where}[{i}]")
    elif type(value) is dict and all(type(key) is str for key in value):
        for key, item in value.items():
            _check_metadata(item, f"{where}.{key}")
    else:
        raise LensError(f"{where} is a {type(value).__name__}: J-lens metadata holds only None, bool, int, float, "
                        "str, lists and string-keyed dicts")


def write_jacobian_lens(path: str | os.PathLike, data: JacobianLensData, *, dtype: torch.dtype = torch.float16) -> Path:
    """Write ``data`` as TL's artifact at ``path`` (atomically; matrices in ``dtype``, fp16 like TL's default)."""
    _check_metadata(data.metadata)
    payload: dict[str, Any] = {"J": {layer: m.detach().cpu().to(dtype).contiguous() for layer, m in data.matrices.items()},
                               "n_prompts": int(data.n_prompts), "source_layers": data.source_layers,
                               "d_model": int(data.d_model)}
    if data.metadata:
        payload["metadata"] = data.metadata
    check_finite_tensors({f"J[{layer}]": m for layer, m in payload["J"].items()}, f"{path} (in {dtype})")
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def jacobian_lens_object(data: JacobianLensData) -> Any:
    """TL's ``JacobianLens`` holding ``data`` (imported now: ``transformer_lens.tools.analysis``, in 3.9 and 4.x)."""
    try:
        from transformer_lens.tools.analysis import JacobianLens
    except ImportError:
        raise LensError("this TransformerLens has no JacobianLens (transformer_lens.tools.analysis): upgrade it, or "
                        "pass a path to write the .pt file, which JacobianLens.load reads") from None
    _check_metadata(data.metadata)
    return JacobianLens(data.matrices, n_prompts=data.n_prompts, d_model=data.d_model, metadata=data.metadata)


# --- a J-lens as a lens of ours, and back ------------------------------------------------------
def into_lens(lens: "TunedLens", data: JacobianLensData) -> "TunedLens":
    """``lens`` (a fresh, bias-free ``TunedLens`` of the model) with translator ``J[l] - I`` at lens layer ``l + 1``
    for every J-lens layer ``l``; the others (lens layer 0, layers the J-lens lacks) stay the identity.
    A model whose residual stream is mean-centred is refused: J was fitted on the raw one."""
    if lens.residual_stream == CENTRED:
        raise LensError(f"{data.source} was fitted on the raw residual stream but this model's is mean-centred "
                        f"(TransformerBridge compatibility mode or center_writing_weights): {HOW_TO_LOAD_RAW}")
    if not lens.default_convention or lens.bias:
        raise LensError("a J-lens fills a bias-free lens on the default hook points: use TunedLens.from_jacobian_lens")
    data.check_model(lens.model_n_layers, lens.d_model)
    recorded = data.metadata.get("model_name")
    if recorded is not None and lens.model_name is not None and recorded != lens.model_name:
        warnings.warn(f"{data.source} records model {recorded!r} but this model is {lens.model_name!r}: check that "
                      "it was fitted on these weights", stacklevel=3)
    with torch.no_grad():
        for layer, matrix in data.matrices.items():
            weight = lens.translators[layer + 1].weight
            weight.copy_(matrix.to(weight) - torch.eye(lens.d_model, dtype=weight.dtype, device=weight.device))
    lens.training_info = {"method": "jacobian_lens", "source": data.source, "n_prompts": data.n_prompts,
                          "jacobian_layers": data.source_layers, "lens_layers": [l + 1 for l in data.source_layers],
                          "jacobian_metadata": data.metadata}
    return lens


def from_lens(lens: "Lens", *, n_prompts: int | None = None, metadata: dict[str, Any] | None = None) -> JacobianLensData:
    """The J-lens of ``lens``: ``J[l]`` = the linear part of its translator at lens layer ``l + 1`` for
    ``l = 0..n_layers-2`` (lens layer 0, the embeddings, has no J-lens counterpart and is left out).
    Refused in one line: a lens on other hook points, one trained on a centred residual stream, or one
    with a non-zero bias (a lens built with ``bias=True`` whose biases are all zero exports: nothing is lost).
    ``n_prompts``: default the imported J-lens's, else 0; ``metadata``: added to what is recorded."""
    if not lens.default_convention:
        raise LensError("only a lens on the default hook points (lens layer i = residual after i blocks) is a J-lens")
    if lens.residual_stream == CENTRED:
        raise LensError("this lens was trained on a mean-centred residual stream and J-lenses read the raw one: save "
                        "it and TunedLens.load it for the model loaded without centring (converted exactly), then export")
    matrices = {}
    for layer in range(1, lens.n_layers):
        linear, bias = affine_parts(lens, layer)
        if bool(bias.ne(0).any()):
            raise LensError(f"the translator of lens layer {layer} has a non-zero bias, which a J-lens cannot hold: "
                            "export a bias-free lens (TunedLens.from_model(model, bias=False))")
        matrices[layer - 1] = linear.float().cpu()
    info = getattr(lens, "training_info", {}) or {}
    if n_prompts is None:
        n_prompts = int(info.get("n_prompts", 0)) if info.get("method") == "jacobian_lens" else 0
    recorded = {"converted_from": "tl_tunedlens", "lens_type": lens.lens_type, "target_layer": lens.model_n_layers - 1}
    if lens.model_name is not None:
        recorded["model_name"] = lens.model_name
    return JacobianLensData(matrices, n_prompts, lens.d_model, {**recorded, **(metadata or {})}, "this lens")
