"""The frozen unembedding every lens shares: the model's own ``ln_final`` then ``unembed``.

It is read from the model through :func:`tl_tunedlens.core.backend.model_facts`, never
re-implemented, so every architecture TransformerLens supports works unchanged. It holds
references to the model's modules, is not an ``nn.Module`` itself, and is never saved with
a lens. Two identities are kept to catch a lens used with the wrong model:

- ``sha256``: a hash of the raw parameters (changes with processing flags such as ``fold_ln``);
- ``fingerprint``: log-probs of fixed probe vectors at fixed token ids, which are invariant to
  ``fold_ln`` / ``center_unembed`` / dtype and to the backend, so a lens built on a processed model
  still matches the same model loaded another way (e.g. a ``HookedTransformer`` and the
  ``TransformerBridge`` of the same weights in compatibility mode).

Speed: when the unembedding is a plain frozen ``x @ W_U + b_U`` (:meth:`Unembed.linear_weights`),
the product runs with a cached contiguous ``W_U.T`` (HookedTransformer copies it on every call; on a
Bridge it is the stored ``[d_vocab, d_model]`` weight itself, no copy), and training and evaluation
may run it themselves (:attr:`Unembed.fusable`, :mod:`tl_tunedlens.core.vocab`).
"""

from __future__ import annotations

import hashlib
import weakref

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..errors import UnembedMismatchError
from .backend import Model, unembed_state, hooks_silenced, linear_unembed_weights, model_facts

N_PROBES = 4
N_PROBE_TOKENS = 32


def to_log_probs(logits: Float[Tensor, "*batch d_vocab"]) -> Float[Tensor, "*batch d_vocab"]:
    """``log_softmax`` over the vocabulary in fp32 or better (bf16/fp16 logits are promoted): nats."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)


def _no_model() -> None:
    return None


class Unembed:
    """``logits = softcap(unembed(ln_final(h)))`` exactly as the model's own forward does (a
    ``HookedTransformer`` or a ``TransformerBridge``, see :mod:`.backend`)."""

    def __init__(self, model: Model):
        facts = model_facts(model)
        self._model = weakref.ref(model)
        self.backend: str = facts.backend
        self.ln_final = facts.ln_final
        self.unembed = facts.unembed
        self.softcap: float | None = facts.softcap
        self.d_model: int = facts.d_model
        self.d_vocab: int = facts.d_vocab
        self.normalization_type: str | None = facts.normalization_type
        self.dtype: torch.dtype = facts.unembed.W_U.dtype
        self._sha256: str | None = None
        self._fingerprint: list[float] | None = None
        self._transposed: tuple | None = None  # (key, W_U.T contiguous, b_U) in the model's precision

    @property
    def model(self) -> Model | None:
        """The model this unembedding was read from (held weakly: ``None`` once it is gone, or after pickling)."""
        return self._model()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_model": None}  # a weak reference does not pickle

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self._model is None:
            self._model = _no_model

    @property
    def device(self) -> torch.device:
        """The device of the unembedding weights."""
        return self.unembed.W_U.device

    @property
    def softcapped(self) -> bool:
        """Whether the model soft-caps its output logits (``tanh``), which the fused path cannot do."""
        return self.softcap is not None

    # --- the fast path ----------------------------------------------------------------
    def linear_weights(self) -> tuple[Float[Tensor, "d_model d_vocab"], Float[Tensor, " d_vocab"]] | None:
        """``(W_U, b_U)``, detached, when the unembedding is exactly ``x @ W_U + b_U`` with frozen
        weights (TransformerLens's own ``Unembed``); ``None`` otherwise (then the module is called)."""
        weights = linear_unembed_weights(self.unembed)
        return None if weights is None else (weights[0].detach(), weights[1].detach())

    @property
    def fusable(self) -> bool:
        """Whether training may run the vocabulary products itself: a plain linear unembedding and
        no output soft-cap (see :mod:`tl_tunedlens.core.vocab`)."""
        return not self.softcapped and self.linear_weights() is not None

    def transposed_weights(self) -> tuple[Float[Tensor, "d_vocab d_model"], Float[Tensor, " d_vocab"]]:
        """``(W_U.T.contiguous(), b_U)`` in the model's precision, cached and refreshed when ``W_U``
        changes in place. Needs :meth:`linear_weights`."""
        weights = self.linear_weights()
        if weights is None:
            raise TypeError("transposed_weights needs a plain linear unembedding (see Unembed.linear_weights)")
        w_u, b_u = weights
        key = (w_u.data_ptr(), w_u._version, w_u.device, tuple(w_u.shape), w_u.dtype, b_u.data_ptr(), b_u._version)
        if self._transposed is None or self._transposed[0] != key:
            self._transposed = None  # free the old copy first
            self._transposed = (key, w_u.T.contiguous(), b_u)
        return self._transposed[1], self._transposed[2]

    # --- decoding ---------------------------------------------------------------------
    def project(self, x: Float[Tensor, "*batch d_model"], matmul_dtype: torch.dtype | None = None
                ) -> Float[Tensor, "*batch d_vocab"]:
        """``model.unembed(x)`` for a normalised ``x``: for a plain frozen unembedding, the same
        ``F.linear`` call with the cached transposed ``W_U`` (bit-identical to the module: same kernel,
        same memory layout). ``matmul_dtype`` (e.g. ``torch.bfloat16``): the product runs in that dtype
        with weights converted for the call (nothing cached: a caller that repeats it keeps its own copy,
        see :mod:`tl_tunedlens.core.vocab`) and the logits come back in it. Other unembedding modules are
        called (hooks silenced) and their output cast."""
        if self.linear_weights() is None:
            with hooks_silenced(self.unembed):
                out = self.unembed(x)
            return out if matmul_dtype is None else out.to(matmul_dtype)
        w_t, b_u = self.transposed_weights()
        if matmul_dtype is not None and matmul_dtype != w_t.dtype:
            w_t, b_u = w_t.to(matmul_dtype), b_u.to(matmul_dtype)
        return F.linear(x.to(w_t.dtype), w_t, b_u)

    def normalize(self, h: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        """The model's own ``ln_final`` (hooks silenced), in the model's dtype."""
        h = h.to(self.dtype)
        if self.ln_final is None:
            return h
        with hooks_silenced(self.ln_final):
            return self.ln_final(h)

    def __call__(self, h: Float[Tensor, "*batch d_model"], matmul_dtype: torch.dtype | None = None
                 ) -> Float[Tensor, "*batch d_vocab"]:
        """Logits of residual ``h``. ``matmul_dtype``: dtype of the vocabulary matmul (default: the
        model's); ``ln_final`` always runs in the model's dtype, the logits come back in ``matmul_dtype``."""
        logits = self.project(self.normalize(h), matmul_dtype)
        if self.softcapped:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits

    def same_modules(self, other: "Unembed") -> bool:
        """Whether ``other`` decodes with the very same model modules (then no identity check is needed)."""
        return self.unembed is other.unembed and self.ln_final is other.ln_final

    # --- identities -------------------------------------------------------------------
    @property
    def sha256(self) -> str:
        """SHA-256 of the raw unembedding parameters (``ln_final`` + ``W_U`` + ``b_U``, under
        HookedTransformer's names and layout on either backend, :func:`~.backend.unembed_state`), fp32."""
        if self._sha256 is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(unembed_state(self.ln_final, self.unembed).items()):
                digest.update(f"{name}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
            self._sha256 = digest.hexdigest()
        return self._sha256

    def probe_token_ids(self) -> Tensor:
        """The fixed token ids at which the fingerprint reads the probe log-probs."""
        return torch.linspace(0, self.d_vocab - 1, N_PROBE_TOKENS).round().long()

    @torch.no_grad()
    def compute_fingerprint(self) -> list[float]:
        """Log-probs (nats) of ``N_PROBES`` seeded probe residuals at fixed token ids."""
        gen = torch.Generator().manual_seed(0)
        probes = torch.randn(N_PROBES, self.d_model, generator=gen, dtype=torch.float64)
        logits = self(probes.to(device=self.device, dtype=self.dtype)).double()
        log_probs = logits.log_softmax(-1)[:, self.probe_token_ids().to(logits.device)]
        return [round(v, 6) for v in log_probs.flatten().cpu().tolist()]

    @property
    def fingerprint(self) -> list[float]:
        """Log-probs of fixed probe vectors (computed once): the model identity that survives processing flags."""
        if self._fingerprint is None:
            self._fingerprint = self.compute_fingerprint()
        return self._fingerprint

    def fingerprint_tolerance(self) -> float:
        """How far (nats) a fingerprint may drift and still be the same model: 1e-3 in fp32/fp64, 0.1 in half precision."""
        return 1e-3 if self.dtype in (torch.float32, torch.float64) else 0.1

    def check(self, *, d_model: int, d_vocab: int, sha256: str | None,
              fingerprint: list[float] | None, what: str = "this lens") -> None:
        """Raise ``UnembedMismatchError`` unless the unembedding matches the recorded one.

        An equal ``sha256`` accepts at once; otherwise the fingerprint must agree within a
        dtype-dependent tolerance (the same model loaded with other processing flags)."""
        if d_model != self.d_model or d_vocab != self.d_vocab:
            raise UnembedMismatchError(
                f"{what} was built for d_model={d_model}, d_vocab={d_vocab} but the model has "
                f"d_model={self.d_model}, d_vocab={self.d_vocab}: use the model the lens was trained on"
            )
        if sha256 is not None and sha256 == self.sha256:
            return
        if fingerprint is None:
            if sha256 is None:
                return
            raise UnembedMismatchError(
                f"{what} was built for an unembedding with hash {sha256[:12]}… but the model's is "
                f"{self.sha256[:12]}…: use the model the lens was trained on"
            )
        ours = torch.tensor(self.fingerprint, dtype=torch.float64)
        theirs = torch.tensor(fingerprint, dtype=torch.float64)
        if ours.shape != theirs.shape or not torch.allclose(
            ours, theirs, atol=self.fingerprint_tolerance(), rtol=self.fingerprint_tolerance()
        ):
            diff = (ours - theirs).abs().max().item() if ours.shape == theirs.shape else float("inf")
            raise UnembedMismatchError(
                f"{what} was built for a different unembedding (hash {str(sha256)[:12]}… vs the "
                f"model's {self.sha256[:12]}…, probe log-probs differ by {diff:.3g} nats): "
                "use the model the lens was trained on"
            )
