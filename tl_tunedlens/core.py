"""The lens core: ``Lens`` (layer indexing + decoding) and its two kinds of translators.

A lens maps the residual stream at lens layer ``i`` (see :mod:`tl_tunedlens.layers`) to
next-token logits through the model's own frozen ``ln_final`` and ``unembed``::

    lens.transform(h, i)  ->  h'                      (identity for the logit lens)
    lens(h, i)            ->  unembed(ln_final(h'))   logits, [... d_vocab]

``TunedLens`` translators are residual affine maps ``h' = h + A h + b`` with ``A, b``
initialised to zero, so an untrained tuned lens equals the logit lens exactly. Layer
``n_layers`` has no translator: it decodes the final residual stream like the model does.
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from .errors import LensError
from .layers import normalize_layer, resid_hook_names
from .residual_basis import residual_stream_kind
from .unembed import Unembed


def _default_lens_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """Translators train in fp32 unless the model is fp64."""
    return torch.float64 if model_dtype == torch.float64 else torch.float32


class Lens(nn.Module):
    """Base class: ``transform(h, layer)`` plus a frozen ``Unembed``; ``forward`` decodes."""

    lens_type: str = "lens"

    def __init__(self, unembed: Unembed, n_layers: int, model_name: str | None = None):
        super().__init__()
        self.unembed = unembed  # a plain object: not a submodule, never in state_dict
        self.n_layers = int(n_layers)
        self.d_model = unembed.d_model
        self.d_vocab = unembed.d_vocab
        self.model_name = model_name
        # identity of the unembedding this lens was built for (see Unembed.check)
        self.unembed_sha256: str = unembed.sha256
        self.unembed_fingerprint: list[float] = unembed.fingerprint

    # --- construction helpers -------------------------------------------------------
    @staticmethod
    def _model_facts(model: nn.Module) -> tuple[Unembed, int, str | None]:
        cfg = getattr(model, "cfg", None)
        if cfg is None or not hasattr(model, "unembed"):
            raise LensError(
                f"expected a TransformerLens HookedTransformer, got {type(model).__name__}: "
                "load one with tl_tunedlens.load_model(...) or HookedTransformer.from_pretrained(...)"
            )
        return Unembed(model), cfg.n_layers, getattr(cfg, "model_name", None)

    # --- layer indexing ---------------------------------------------------------------
    @property
    def hook_names(self) -> list[str]:
        """Hook name read by each lens layer ``0..n_layers`` (usable as ``names_filter``)."""
        return resid_hook_names(self.n_layers)

    @property
    def layers(self) -> list[int]:
        return list(range(self.n_layers + 1))

    def layer_index(self, layer: int) -> int:
        """Normalise ``layer`` (negative counts from the end) to ``0..n_layers``."""
        return normalize_layer(layer, self.n_layers)

    def hook_name(self, layer: int) -> str:
        return self.hook_names[self.layer_index(layer)]

    def _check_resid(self, h: Tensor) -> None:
        if not isinstance(h, Tensor):
            raise LensError(f"expected a residual-stream tensor, got {type(h).__name__}")
        if h.ndim == 0 or h.shape[-1] != self.d_model:
            raise LensError(
                f"residual stream has last dimension {tuple(h.shape)[-1:] or '()'} but this lens "
                f"expects d_model={self.d_model}: pass activations of shape [..., {self.d_model}]"
            )

    # --- the lens itself --------------------------------------------------------------
    def _transform(self, h: Tensor, layer: int) -> Tensor:
        """Translator of a normalised ``layer``; ``h`` is already checked."""
        return h

    def transform(self, h: Float[Tensor, "*batch d_model"], layer: int) -> Float[Tensor, "*batch d_model"]:
        """The translated residual stream at lens layer ``layer`` (same shape and dtype)."""
        self._check_resid(h)
        return self._transform(h, self.layer_index(layer))

    def forward(self, h: Float[Tensor, "*batch d_model"], layer: int) -> Float[Tensor, "*batch d_vocab"]:
        """Logits of lens layer ``layer``: ``unembed(ln_final(transform(h, layer)))``."""
        return self.unembed(self.transform(h, layer))

    def log_probs(self, h: Float[Tensor, "*batch d_model"], layer: int) -> Float[Tensor, "*batch d_vocab"]:
        """Log-probabilities (nats) of lens layer ``layer``, computed in fp32 or better."""
        logits = self(h, layer)
        return logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)

    def forward_all(
        self, resids: Float[Tensor, "layer *batch d_model"] | Sequence[Tensor]
    ) -> Float[Tensor, "layer *batch d_vocab"]:
        """Logits of every layer at once: ``resids[i]`` is the residual at lens layer ``i``.

        Takes ``n_layers + 1`` residuals (stacked or as a list); returns them stacked."""
        if len(resids) != self.n_layers + 1:
            raise LensError(
                f"forward_all needs one residual per lens layer ({self.n_layers + 1}), got "
                f"{len(resids)}: pass lens.residuals_from_cache(cache) or a list ordered like lens.hook_names"
            )
        return torch.stack([self(h, i) for i, h in enumerate(resids)])

    def check_model(self, model: nn.Module) -> None:
        """Raise ``UnembedMismatchError`` unless ``model`` has this lens's unembedding."""
        unembed, n_layers, _ = self._model_facts(model)
        self.check_unembed(unembed, n_layers)
        kind = getattr(self, "residual_stream", None)  # set by TunedLens (see residual_basis)
        if kind is not None and not unembed.same_modules(self.unembed):
            model_kind = residual_stream_kind(model)
            if model_kind != kind:
                raise LensError(
                    f"this {type(self).__name__} was trained on a {kind} residual stream but the model's is "
                    f"{model_kind} (center_writing_weights differs): load the model with the processing the "
                    "lens was trained with, or save the lens and TunedLens.load it for this model"
                )

    def check_unembed(self, unembed: Unembed, n_layers: int) -> None:
        if n_layers != self.n_layers:
            raise LensError(
                f"this lens has {self.n_layers} layers but the model has {n_layers}: "
                "use the model the lens was trained on"
            )
        if unembed.same_modules(self.unembed):
            return
        unembed.check(
            d_model=self.d_model, d_vocab=self.d_vocab, sha256=self.unembed_sha256,
            fingerprint=self.unembed_fingerprint, what=f"this {type(self).__name__}",
        )

    def extra_repr(self) -> str:
        return f"n_layers={self.n_layers}, d_model={self.d_model}, d_vocab={self.d_vocab}"


class LogitLensCore(Lens):
    """The logit lens: no parameters, ``transform`` is the identity."""

    lens_type = "logit_lens"


class TunedLensCore(Lens):
    """Residual affine translators ``h + A h + b`` for layers ``0..n_layers-1``, zero-initialised."""

    lens_type = "tuned_lens"

    def __init__(self, unembed: Unembed, n_layers: int, *, bias: bool = True,
                 dtype: torch.dtype | None = None, model_name: str | None = None):
        super().__init__(unembed, n_layers, model_name)
        self.bias = bool(bias)
        dtype = dtype or _default_lens_dtype(unembed.dtype)
        self.translators = nn.ModuleList(
            nn.Linear(self.d_model, self.d_model, bias=self.bias, device=unembed.device, dtype=dtype)
            for _ in range(self.n_layers)
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Zero every translator: the lens becomes the logit lens exactly."""
        for translator in self.translators:
            translator.weight.zero_()
            if translator.bias is not None:
                translator.bias.zero_()

    def _transform(self, h: Tensor, layer: int) -> Tensor:
        if layer == self.n_layers:
            return h
        translator = self.translators[layer]
        x = h.to(translator.weight.dtype)
        return (x + translator(x)).to(h.dtype)
