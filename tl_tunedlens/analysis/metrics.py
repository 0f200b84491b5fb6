"""The evaluation metrics JSON (``tl-tunedlens eval --out``, ``metrics.json``): its shape, and what is read from it.

All values are nats per token unless said otherwise; ``bits_per_byte`` repeats the nat values
converted with the data's bytes per token (``nats / bytes_per_token / ln 2``).
"""

from __future__ import annotations

import math
from typing import Mapping, TypedDict

from ..errors import LensError

LENS_NAMES = ("logit", "tuned")


class LensMetrics(TypedDict):
    """One lens at one layer: ``kl`` = KL(model || lens), ``ce`` against the next token, ``entropy`` of
    the lens, ``top1`` = fraction of positions where the lens's top token is the model's."""

    kl: float
    ce: float
    entropy: float
    top1: float
    bits_per_byte: dict[str, float]


class LayerMetrics(TypedDict, total=False):
    """One lens layer: its number, the hook it reads, and each evaluated lens (``"logit"``, ``"tuned"``)."""

    layer: int
    hook: str
    logit: LensMetrics
    tuned: LensMetrics


class Baseline(TypedDict):
    """The model's own cross-entropy and entropy."""

    ce: float
    entropy: float
    bits_per_byte: dict[str, float]


class EvalMetrics(TypedDict):
    """The whole metrics dict: model name, positions scored, bytes per token, the model's own baseline and one entry per lens layer."""
    model: str
    tokens: int
    bytes_per_token: float
    baseline: Baseline
    layers: list[LayerMetrics]       # lens layers 0..n_layers; the last is the model's output


def lenses_in(metrics: Mapping) -> list[str]:
    """Which lenses a metrics dict holds, in the order ``logit``, ``tuned``."""
    return [name for name in LENS_NAMES if name in metrics["layers"][0]]


def mean_kl(metrics: Mapping, lens: str = "logit", first: int = 0) -> float:
    """Mean KL (nats) over layers ``first..n_layers-1`` of ``metrics`` for ``lens`` ("logit"/"tuned")."""
    rows = [e[lens]["kl"] for e in metrics["layers"][first:-1]]
    return float(sum(rows) / max(len(rows), 1))


def layers_where_worse(metrics: Mapping, lens: str = "tuned", than: str = "logit") -> list[int]:
    """Layers ``0..n_layers-1`` where ``lens`` does not have a lower KL than ``than``."""
    return [e["layer"] for e in metrics["layers"][:-1] if not e[lens]["kl"] < e[than]["kl"]]


def check_finite_metrics(metrics: EvalMetrics) -> EvalMetrics:
    """``metrics`` unchanged when every value is finite; else a one-line error naming the lens, the
    metric and the layer (a metrics file never holds NaN; JSON has no such number)."""
    for key in ("ce", "entropy"):
        if not math.isfinite(metrics["baseline"][key]):
            raise LensError(f"the model's own {key} is {metrics['baseline'][key]}: its output is not finite on this data")
    for entry in metrics["layers"]:
        for lens in lenses_in(metrics):
            for key in ("kl", "ce", "entropy", "top1"):
                if not math.isfinite(entry[lens][key]):
                    raise LensError(f"the {lens} lens's {key} at layer {entry['layer']} is {entry[lens][key]}: "
                                    "the lens or the model gives non-finite log-probs there")
    return metrics
