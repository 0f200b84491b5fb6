"""The frozen decoder every lens shares: the model's own ``ln_final`` then ``unembed``.

It is read from the model (``model.ln_final``, ``model.unembed``, ``model.cfg``), never
re-implemented, so every architecture TransformerLens supports works unchanged. It holds
references to the model's modules, is not an ``nn.Module`` itself, and is never saved with
a lens. Two identities are kept to catch a lens used with the wrong model:

- ``sha256``: a hash of the raw parameters (changes with processing flags such as ``fold_ln``);
- ``fingerprint``: log-probs of fixed probe vectors at fixed token ids, which are invariant to
  ``fold_ln`` / ``center_unembed`` / dtype, so a lens built on a processed model still matches
  the same model loaded another way.
"""

from __future__ import annotations

import contextlib
import hashlib

import torch
from jaxtyping import Float
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.components import Unembed as TLUnembed
from transformer_lens.hook_points import HookPoint

from .errors import UnembedMismatchError

N_PROBES = 4
N_PROBE_TOKENS = 32


@contextlib.contextmanager
def _hooks_silenced(module: nn.Module | None):
    """Run ``module`` with its HookPoints' hooks detached, so lens decoding inside a
    ``run_with_hooks``/``run_with_cache`` never fires or overwrites ``ln_final.*`` hooks."""
    if module is None:
        yield
        return
    saved = []
    for sub in module.modules():
        if isinstance(sub, HookPoint) and (sub._forward_hooks or sub._backward_hooks):
            saved.append((sub, sub._forward_hooks, sub._backward_hooks))
            sub._forward_hooks, sub._backward_hooks = type(sub._forward_hooks)(), type(sub._backward_hooks)()
    try:
        yield
    finally:
        for sub, fwd, bwd in saved:
            sub._forward_hooks, sub._backward_hooks = fwd, bwd


class Unembed:
    """``logits = softcap(unembed(ln_final(h)))`` exactly as ``HookedTransformer.forward`` does."""

    def __init__(self, model: nn.Module):
        cfg = model.cfg
        self.ln_final: nn.Module | None = getattr(model, "ln_final", None)
        if cfg.normalization_type is None:
            self.ln_final = None
        self.unembed: nn.Module = model.unembed
        self.softcap: float | None = getattr(cfg, "output_logits_soft_cap", None)
        self.d_model: int = cfg.d_model
        self.d_vocab: int = cfg.d_vocab_out if getattr(cfg, "d_vocab_out", -1) > 0 else cfg.d_vocab
        self.dtype: torch.dtype = model.unembed.W_U.dtype
        self._sha256: str | None = None
        self._w_u_t: tuple | None = None  # (key, W_U.T.contiguous()) cache, see _unembed
        self._w_u_t_low: tuple | None = None  # (key, W_U.T.contiguous().to(matmul_dtype)), see _unembed
        self._fingerprint: list[float] | None = None

    @property
    def device(self) -> torch.device:
        return self.unembed.W_U.device

    def vocab_weights(self, matmul_dtype: torch.dtype | None = None, *, cache: bool = True
                      ) -> tuple[Tensor, Tensor] | None:
        """``(W_U.T.contiguous() [d_vocab d_model], b_U [d_vocab])`` in ``matmul_dtype`` (default: the
        model's), cached, when the unembedding is TransformerLens's own ``Unembed`` with frozen weights
        and no output soft-cap (so ``logits = normalize(h) @ W_U + b_U`` exactly); else ``None``.
        TL itself copies ``W_U.T`` on every call. ``cache=False``: return ``(W_U, b_U)`` uncopied, or
        ``None``: just whether the fast path applies."""
        module = self.unembed
        w_u = getattr(module, "W_U", None)
        if type(module) is not TLUnembed or w_u is None or w_u.requires_grad:
            return None
        if not cache:  # only asking whether the fast path applies
            return w_u, module.b_U
        key = (w_u.data_ptr(), w_u._version, w_u.device, w_u.dtype, tuple(w_u.shape))
        if matmul_dtype is None or matmul_dtype == w_u.dtype:
            if self._w_u_t is None or self._w_u_t[0] != key:
                self._w_u_t = (key, w_u.detach().T.contiguous())
            return self._w_u_t[1], module.b_U.detach()
        b_u = module.b_U
        key = key + (matmul_dtype, b_u.data_ptr(), b_u._version)
        if self._w_u_t_low is None or self._w_u_t_low[0] != key:
            self._w_u_t_low = None  # free the old copy first
            self._w_u_t_low = (key, w_u.detach().to(matmul_dtype).T.contiguous(), b_u.detach().to(matmul_dtype))
        return self._w_u_t_low[1], self._w_u_t_low[2]

    def _unembed(self, h: Tensor, matmul_dtype: torch.dtype | None = None) -> Tensor:
        """``model.unembed(h)``: for TransformerLens's own ``Unembed`` with frozen weights, the same
        ``F.linear`` call with the cached transposed ``W_U`` (bit-identical to the module: same kernel,
        same memory layout). ``matmul_dtype`` (e.g. ``torch.bfloat16``, for training): the product runs
        in that dtype with converted weights; the logits come back in that dtype. Other unembedding
        modules get their output cast instead (no speed-up)."""
        weights = self.vocab_weights(matmul_dtype)
        if weights is None:
            with _hooks_silenced(self.unembed):
                out = self.unembed(h)
            return out if matmul_dtype is None else out.to(matmul_dtype)
        w_t, b_u = weights
        return F.linear(h.to(w_t.dtype), w_t, b_u)

    def normalize(self, h: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        """The model's own ``ln_final`` (hooks silenced), in the model's dtype."""
        h = h.to(self.dtype)
        if self.ln_final is None:
            return h
        with _hooks_silenced(self.ln_final):
            return self.ln_final(h)

    @property
    def softcapped(self) -> bool:
        return self.softcap is not None and self.softcap > 0

    def __call__(self, h: Float[Tensor, "*batch d_model"], matmul_dtype: torch.dtype | None = None
                 ) -> Float[Tensor, "*batch d_vocab"]:
        """Logits of ``h``. ``matmul_dtype``: dtype of the vocabulary matmul (default: the model's);
        ``ln_final`` always runs in the model's dtype, the logits come back in ``matmul_dtype``."""
        logits = self._unembed(self.normalize(h), matmul_dtype)
        if self.softcapped:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits

    def same_modules(self, other: "Unembed") -> bool:
        return self.unembed is other.unembed and self.ln_final is other.ln_final

    # --- identities -------------------------------------------------------------------
    @property
    def sha256(self) -> str:
        """SHA-256 of the raw unembedding parameters (``ln_final`` + ``W_U`` + ``b_U``), fp32."""
        if self._sha256 is None:
            digest = hashlib.sha256()
            modules = [("ln_final", self.ln_final), ("unembed", self.unembed)]
            for prefix, module in modules:
                if module is None:
                    continue
                for name, tensor in sorted(module.state_dict().items()):
                    digest.update(f"{prefix}.{name}:{tuple(tensor.shape)}".encode())
                    digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
            self._sha256 = digest.hexdigest()
        return self._sha256

    def probe_token_ids(self) -> Tensor:
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
        if self._fingerprint is None:
            self._fingerprint = self.compute_fingerprint()
        return self._fingerprint

    def fingerprint_tolerance(self) -> float:
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
