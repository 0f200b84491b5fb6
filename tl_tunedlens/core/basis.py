"""Is a TransformerLens residual stream the Hugging Face hidden states, or their mean-centred copy?

TransformerLens's ``center_writing_weights`` (on by default in ``from_pretrained``) removes the
mean over ``d_model`` from every weight that writes into the residual stream. It only does so
for LayerNorm models (``cfg.normalization_type`` ``"LN"`` / ``"LNPre"``, the latter after
``fold_ln``), so the stream becomes ``P h`` with ``P = I - 11ᵀ/d_model``: the model's outputs are
unchanged (LayerNorm centres anyway), but a tuned lens's affine map sees different inputs.
``fold_ln`` and ``center_unembed`` leave the residual stream alone.

The rule used here (no per-architecture code): the stream is ``"centred"`` when the model is a
LayerNorm model and every row of ``W_E`` has mean ~0 over ``d_model`` (relative to its spread;
an uncentred embedding has ``|mean| ~ std/sqrt(d_model)``, a centred one rounding error), and
``"raw"`` (equal to Hugging Face's ``hidden_states``) otherwise.

A lens trained on a centred stream converts *exactly* to the raw one (``A -> A P``, valid because
the final LayerNorm only sees ``P h'``); the reverse needs the discarded mean and is refused.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import LensError
from .backend import Model, embedding_matrix, model_facts

RAW = "raw"            # equals Hugging Face's hidden_states
CENTRED = "centred"    # mean over d_model removed (center_writing_weights on a LayerNorm model)
KINDS = (RAW, CENTRED)
LAYERNORM_TYPES = ("LN", "LNPre")

HOW_TO_LOAD_RAW = (
    "load the model without centring, e.g. tl_tunedlens.load_model(name, center_writing_weights=False) (either "
    "backend), HookedTransformer.from_pretrained_no_processing(name), or a TransformerBridge without "
    "enable_compatibility_mode() (load_model(name, backend='bridge', compatibility_mode=False))"
)


def rows_centred(w: Tensor) -> bool:
    """True when every row of ``w`` ([rows, d_model]) has mean ~0 relative to its spread."""
    w = w.detach().float()  # no copy for fp32 models; torch reductions are pairwise-accurate
    d = w.shape[-1]
    mean_abs = w.mean(-1).abs().mean()
    spread = w.std(-1).mean()
    if spread == 0:
        return False
    return bool(mean_abs <= 0.05 / math.sqrt(d) * spread)


def residual_stream_kind(model: Model) -> str:
    """``"centred"`` if ``model``'s residual stream is mean-centred, else ``"raw"`` (see module doc)."""
    if kind_from_normalization(model_facts(model).normalization_type) == RAW:
        return RAW  # TransformerLens centres writing weights only for LayerNorm models
    w_e = embedding_matrix(model)
    return CENTRED if w_e is not None and rows_centred(w_e) else RAW


def kind_from_normalization(normalization_type: str | None) -> str | None:
    """The stream kind when the norm type alone decides it (non-LayerNorm models are raw), else None."""
    return RAW if normalization_type not in LAYERNORM_TYPES else None


def centring_projection(d_model: int, dtype: torch.dtype = torch.float64) -> Float[Tensor, "d_model d_model"]:
    """``P = I - 11ᵀ/d_model``: removes the mean over ``d_model``."""
    return torch.eye(d_model, dtype=dtype) - torch.full((d_model, d_model), 1.0 / d_model, dtype=dtype)


@torch.no_grad()
def centred_to_raw_weight(weight: Float[Tensor, "d_model d_model"]) -> Float[Tensor, "d_model d_model"]:
    """Translator weight ``A`` trained on ``P h`` -> ``A P`` for raw ``h`` (same lens logits, exactly
    up to float rounding, because the final LayerNorm sees only ``P h'``)."""
    proj = centring_projection(weight.shape[-1]).to(weight.device)
    return (weight.double() @ proj).to(weight.dtype)


def check_transfer(lens_kind: str | None, model_kind: str, what: str) -> None:
    """Raise unless a lens trained on a ``lens_kind`` stream is exact on a ``model_kind`` model.

    ``None`` (unknown, old files) is accepted; centred -> raw is converted by the caller."""
    if lens_kind == RAW and model_kind == CENTRED:
        raise LensError(
            f"{what} was trained on the raw residual stream (Hugging Face hidden states) but this model's "
            f"stream is mean-centred (LayerNorm model loaded with center_writing_weights=True), so its "
            f"predictions would differ: {HOW_TO_LOAD_RAW}"
        )
    if lens_kind not in (None, *KINDS):
        raise LensError(f"{what} has unknown residual_stream {lens_kind!r}: expected one of {KINDS}")
