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

import torch
from jaxtyping import Int
from torch import Tensor

from .data import bits_per_byte
from .errors import LensError
from .residuals import capture_residuals

METRICS = ("kl", "ce", "entropy", "top1")


def _bpb(values: dict[str, float], bytes_per_token: float) -> dict[str, float]:
    return {k: bits_per_byte(v, bytes_per_token) for k, v in values.items() if k != "top1"}


@torch.no_grad()
def evaluate_lenses(model, sequences: Int[Tensor, "n_seq seq_len"], *, tuned=None,
                    bytes_per_token: float = math.nan, max_tokens: int | None = None,
                    chunk_tokens: int = 512, micro_batch: int | None = None,
                    progress: bool = False) -> dict:
    """Metrics of the logit lens (and ``tuned``, if given) on ``sequences``; see the module docstring.

    ``max_tokens``: evaluate only the first ``ceil(max_tokens / (seq_len - 1))`` sequences.
    Returns the metrics dict (JSON-ready, nats, plus ``bits_per_byte`` entries)."""
    from tqdm.auto import tqdm

    from .lens import LogitLens

    if sequences.ndim != 2 or sequences.shape[1] < 2 or len(sequences) == 0:
        raise LensError("evaluation needs token sequences of shape [n_seq, seq_len >= 2]: pass more text")
    logit = LogitLens.from_model(model)
    if tuned is not None:
        tuned.check_model(model)
    lenses = {"logit": logit} | ({"tuned": tuned} if tuned is not None else {})
    n_layers = logit.n_layers
    per_seq = sequences.shape[1] - 1
    n_seq = len(sequences) if max_tokens is None else max(1, min(len(sequences), -(-int(max_tokens) // per_seq)))
    sequences = sequences[:n_seq]
    micro = micro_batch or max(1, chunk_tokens // sequences.shape[1])

    device = logit.unembed.device
    sums = {name: torch.zeros(n_layers, len(METRICS), dtype=torch.float64, device=device) for name in lenses}
    base = torch.zeros(2, dtype=torch.float64, device=device)
    count = 0
    for start in tqdm(range(0, n_seq, micro), desc="eval", disable=not progress, leave=False):
        batch = sequences[start:start + micro]
        resids = capture_residuals(model, batch, logit.hook_names)[:, :, :-1].flatten(1, 2)
        labels = batch[:, 1:].flatten().to(resids.device)
        for c in range(0, resids.shape[1], chunk_tokens):
            sl = slice(c, c + chunk_tokens)
            lab = labels[sl, None]
            logp = logit.log_probs(resids[-1, sl], n_layers)
            p = logp.exp()
            top = logp.argmax(-1)
            base[0] += -logp.gather(-1, lab).sum().double()
            base[1] += -torch.linalg.vecdot(p, logp).sum().double()
            count += lab.shape[0]
            for name, lens in lenses.items():
                for layer in range(n_layers):
                    lq = lens.log_probs(resids[layer, sl], layer)
                    row = sums[name][layer]
                    row[0] += torch.linalg.vecdot(p, logp - lq).sum().double()
                    row[1] += -lq.gather(-1, lab).sum().double()
                    row[2] += -torch.linalg.vecdot(lq.exp(), lq).sum().double()
                    row[3] += (lq.argmax(-1) == top).sum().double()
                    del lq
            del logp, p
    baseline = {"ce": float(base[0] / count), "entropy": float(base[1] / count)}
    layers = []
    for layer in range(n_layers + 1):
        entry: dict = {"layer": layer, "hook": logit.hook_names[layer]}
        for name in lenses:
            if layer == n_layers:
                values = {"kl": 0.0, "ce": baseline["ce"], "entropy": baseline["entropy"], "top1": 1.0}
            else:
                values = dict(zip(METRICS, (sums[name][layer] / count).tolist()))
                values["kl"] = max(values["kl"], 0.0)
            values["bits_per_byte"] = _bpb(values, bytes_per_token)
            entry[name] = values
        layers.append(entry)
    return {
        "model": str(getattr(model.cfg, "model_name", "")),
        "tokens": int(count),
        "bytes_per_token": float(bytes_per_token),
        "baseline": {**baseline, "bits_per_byte": _bpb(baseline, bytes_per_token)},
        "layers": layers,
    }


def mean_kl(metrics: dict, lens: str = "logit", first: int = 0) -> float:
    """Mean KL (nats) over layers ``first..n_layers-1`` of ``metrics`` for ``lens`` ("logit"/"tuned")."""
    rows = [e[lens]["kl"] for e in metrics["layers"][first:-1]]
    return float(sum(rows) / max(len(rows), 1))
