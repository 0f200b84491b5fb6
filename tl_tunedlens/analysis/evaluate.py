"""Evaluating the logit lens and a tuned lens per layer on held-out tokens.

For every lens layer ``0..n_layers`` and every position that has a next token:

- ``kl``: KL(model's final distribution || lens distribution), nats;
- ``ce``: cross-entropy of the lens against the actual next token, nats;
- ``entropy``: entropy of the lens distribution, nats;
- ``top1``: fraction of positions where the lens's top-1 token equals the model's top-1;

plus the model's own CE and entropy (``baseline``). Each nat value also appears in bits per byte
(``nats / bytes_per_token / ln 2``). At layer ``n_layers`` both lenses are the model itself
(``kl = 0``, ``top1 = 1``). Positions are taken in order (first sequences first): deterministic.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..core.backend import capture_residuals, flatten_tokens
from ..data.tokens import bits_per_byte
from ..errors import LensError
from ..lens import LogitLens
from .metrics import EvalMetrics

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from ..lens import TunedLens

METRICS = ("kl", "ce", "entropy", "top1")


def _bpb(values: dict[str, float], bytes_per_token: float) -> dict[str, float]:
    return {k: bits_per_byte(v, bytes_per_token) for k, v in values.items() if k != "top1"}


@torch.no_grad()
def evaluate_lenses(model: "HookedTransformer", sequences: Int[Tensor, "n_seq seq_len"], *,
                    tuned: "TunedLens | None" = None, bytes_per_token: float = math.nan,
                    max_tokens: int | None = None, chunk_tokens: int = 512, micro_batch: int | None = None,
                    progress: bool = False) -> EvalMetrics:
    """Metrics of the logit lens (and ``tuned``, if given) on ``sequences``; see the module docstring.

    ``max_tokens``: evaluate only the first ``ceil(max_tokens / (seq_len - 1))`` sequences.
    Returns the metrics dict (JSON-ready, nats, plus ``bits_per_byte`` entries; see :mod:`.metrics`)."""
    from tqdm.auto import tqdm

    if sequences.ndim != 2 or sequences.shape[1] < 2 or len(sequences) == 0:
        raise LensError("evaluation needs token sequences of shape [n_seq, seq_len >= 2]: pass more text")
    logit = LogitLens.from_model(model)
    if tuned is not None:
        tuned.check_model(model)
    lenses = {"logit": logit} | ({"tuned": tuned} if tuned is not None else {})
    per_seq = sequences.shape[1] - 1
    n_seq = len(sequences) if max_tokens is None else max(1, min(len(sequences), -(-int(max_tokens) // per_seq)))
    micro = micro_batch or max(1, chunk_tokens // sequences.shape[1])
    sums = _Sums(lenses, logit.n_layers, logit.unembed.device)
    for start in tqdm(range(0, n_seq, micro), desc="eval", disable=not progress, leave=False):
        batch = sequences[start:min(start + micro, n_seq)]
        resids = flatten_tokens(capture_residuals(model, batch, logit.hook_names)[:, :, :-1])
        labels = batch[:, 1:].flatten().to(resids.device)
        for c in range(0, resids.shape[1], chunk_tokens):
            sums.add(resids[:, c:c + chunk_tokens], labels[c:c + chunk_tokens, None])
    return sums.metrics(str(getattr(model.cfg, "model_name", "")), logit.hook_names, bytes_per_token)


class _Sums:
    """Running metric sums (fp64) of each lens per layer, and of the model itself."""

    def __init__(self, lenses: dict, n_layers: int, device: torch.device):
        self.lenses, self.n_layers = lenses, n_layers
        self.per_layer = {name: torch.zeros(n_layers, len(METRICS), dtype=torch.float64, device=device)
                          for name in lenses}
        self.base = torch.zeros(2, dtype=torch.float64, device=device)  # the model's CE and entropy
        self.count = 0

    def add(self, resids: Float[Tensor, "layer m d_model"], labels: Int[Tensor, "m 1"]) -> None:
        """One chunk of ``m`` positions: residuals of every lens layer and the next tokens."""
        final = self.lenses["logit"]
        logp = final.log_probs(resids[-1], self.n_layers)
        p = logp.exp()
        top = logp.argmax(-1)
        self.base[0] += -logp.gather(-1, labels).sum().double()
        self.base[1] += -torch.linalg.vecdot(p, logp).sum().double()
        self.count += labels.shape[0]
        for name, lens in self.lenses.items():
            for layer in range(self.n_layers):
                lq = lens.log_probs(resids[layer], layer)
                row = self.per_layer[name][layer]
                row[0] += torch.linalg.vecdot(p, logp - lq).sum().double()
                row[1] += -lq.gather(-1, labels).sum().double()
                row[2] += -torch.linalg.vecdot(lq.exp(), lq).sum().double()
                row[3] += (lq.argmax(-1) == top).sum().double()
                del lq

    def metrics(self, model_name: str, hook_names: list[str], bytes_per_token: float) -> EvalMetrics:
        """Means over the positions seen, as the metrics dict."""
        baseline = {"ce": float(self.base[0] / self.count), "entropy": float(self.base[1] / self.count)}
        layers = []
        for layer in range(self.n_layers + 1):
            entry: dict = {"layer": layer, "hook": hook_names[layer]}
            for name in self.lenses:
                if layer == self.n_layers:
                    values = {"kl": 0.0, "ce": baseline["ce"], "entropy": baseline["entropy"], "top1": 1.0}
                else:
                    values = dict(zip(METRICS, (self.per_layer[name][layer] / self.count).tolist()))
                    values["kl"] = max(values["kl"], 0.0)
                values["bits_per_byte"] = _bpb(values, bytes_per_token)
                entry[name] = values
            layers.append(entry)
        return {"model": model_name, "tokens": int(self.count), "bytes_per_token": float(bytes_per_token),
                "baseline": {**baseline, "bits_per_byte": _bpb(baseline, bytes_per_token)}, "layers": layers}
