"""plotly figures of the experiment tools: logit differences, prediction depth, layer transfer and
causal effects; and an offline page of an evaluation's figures.

- :func:`logit_difference_figure` / :func:`trajectory_logit_diff_figure`: ``logit(a) - logit(b)`` per
  layer (nats), one line per lens;
- :func:`prediction_depth_figure`: per input token, the prediction depth of each lens;
- :func:`transfer_heatmap`: the layer-transfer matrix (:mod:`tl_tunedlens.analysis.transfer`);
- :func:`causal_effects_figure`: per direction, lens effect vs model effect, with Spearman's rho;
- :func:`write_metrics_page`: the metric curves (and the transfer heatmap, when measured) on one page.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import plotly.graph_objects as go

from ..analysis.trajectory import PredictionTrajectory
from ..artifacts.files import write_text_atomic
from ..errors import LensError
from .plots import display_token, figure_html, load_metrics, metric_curves

if TYPE_CHECKING:
    from ..analysis.causal import CausalEffects

LENS_COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
_LAYOUT = {"template": "plotly_white", "margin": {"t": 60, "l": 70, "r": 20, "b": 50}}


def logit_difference_figure(diffs: Mapping[str, Sequence[float]], layer_labels: Sequence[str], token_a: str,
                            token_b: str, position: int, input_token: str) -> go.Figure:
    """One line per lens: ``logit(a) - logit(b)`` per layer (nats; ``log p(a) - log p(b)``, the
    normaliser cancels), the last layer being the model's own output."""
    a, b = display_token(token_a), display_token(token_b)
    fig = go.Figure()
    for i, (name, values) in enumerate(diffs.items()):
        fig.add_trace(go.Scatter(
            x=list(range(len(values))), y=list(values), mode="lines+markers", name=name,
            line={"color": LENS_COLORS[i % len(LENS_COLORS)]}, customdata=list(layer_labels),
            hovertemplate=f"{html.escape(name)}, layer %{{customdata}}: %{{y:.3f}} nats<extra></extra>"))
    fig.add_hline(y=0, line={"color": "#999", "width": 1})
    fig.update_xaxes(title_text="layer", tickvals=list(range(len(layer_labels))), ticktext=list(layer_labels))
    fig.update_yaxes(title_text=f"logit({a!r}) − logit({b!r}), nats")
    fig.update_layout(title=f"logit difference {a!r} − {b!r} at position {position} ({display_token(input_token)!r})",
                      height=360, legend={"orientation": "h", "y": -0.25}, **_LAYOUT)
    return fig


def trajectory_logit_diff_figure(trajs: Sequence[PredictionTrajectory], token_a: int | str, token_b: int | str,
                                 position: int = -1, index: int = 0) -> go.Figure:
    """:func:`logit_difference_figure` of trajectories (built with ``watch=[a, b]`` or full log-probs) at
    ``position`` of prompt ``index``, one line per trajectory."""
    if not trajs:
        raise LensError("pass at least one trajectory")
    first = trajs[0]
    pos = position % first.n_pos if -first.n_pos <= position < first.n_pos else None
    if pos is None:
        raise LensError(f"position {position} is out of range for {first.n_pos} positions")
    index = first.prompt_index(index)
    diffs = {t.lens_name: t.logit_diff(token_a, token_b)[:, index, pos].tolist() for t in trajs}
    a, b = (first.decode(first.token_id(t)) for t in (token_a, token_b))
    return logit_difference_figure(diffs, first.layer_labels, a, b, pos, first.input_strings(index)[pos])


def prediction_depth_figure(trajs: Sequence[PredictionTrajectory], index: int = 0) -> go.Figure:
    """Per input token of prompt ``index``, each lens's prediction depth (the first layer from which its
    top-1 is the model's and stays so; the output row means only the model itself)."""
    if not trajs:
        raise LensError("pass at least one trajectory")
    first = trajs[0]
    index = first.prompt_index(index)
    ticks = [f"{i}: {display_token(s)}" for i, s in enumerate(first.input_strings(index))]
    fig = go.Figure()
    for i, traj in enumerate(trajs):
        depth = traj.prediction_depth()[index].tolist()
        fig.add_trace(go.Bar(x=ticks, y=depth, name=traj.lens_name, marker={"color": LENS_COLORS[i % len(LENS_COLORS)]},
                             customdata=[traj.layer_labels[d] for d in depth],
                             hovertemplate=f"{html.escape(traj.lens_name)}: depth %{{customdata}}<extra></extra>"))
    fig.update_xaxes(title_text="input token (predicting the next)")
    fig.update_yaxes(title_text="prediction depth (layer)", tickvals=list(range(first.n_rows)),
                     ticktext=list(first.layer_labels))
    fig.update_layout(title="prediction depth: first layer whose top-1 is the model's and stays so",
                      barmode="group", height=380, **_LAYOUT)
    return fig


def transfer_heatmap(transfer: Mapping[str, Any]) -> go.Figure:
    """The layer-transfer matrix (the ``"transfer"`` entry of the metrics JSON, or the metrics themselves):
    row ``i`` = the residual's layer, column ``j`` = the translator's, colour = KL(model || lens), nats."""
    transfer = transfer.get("transfer", transfer)
    if not isinstance(transfer, Mapping) or "kl" not in transfer or "layers" not in transfer:
        raise LensError('no layer-transfer matrix: run `tl-tunedlens eval --transfer` (metrics["transfer"])')
    labels = [str(i) for i in transfer["layers"]]
    fig = go.Figure(go.Heatmap(z=transfer["kl"], x=labels, y=labels, colorscale="Viridis",
                               colorbar={"title": {"text": "nats"}},
                               hovertemplate="residual of layer %{y}, translator %{x}: KL %{z:.3f} nats<extra></extra>"))
    fig.update_xaxes(title_text="translator of layer j", type="category")
    fig.update_yaxes(title_text="residual of layer i", type="category", autorange="reversed")
    fig.update_layout(title=f"layer transfer: KL(model || translator j on layer i) ({transfer.get('tokens', '?')} tokens)",
                      width=520 + 8 * len(labels), height=460 + 8 * len(labels), **_LAYOUT)
    return fig


def causal_effects_figure(effects: Mapping[str, "CausalEffects"]) -> go.Figure:
    """Per lens (e.g. ``{"logit lens": ..., "tuned lens": ...}``), each direction's effect on the lens
    (x) against its effect on the model's output (y), log scales, Spearman's rho in the legend."""
    fig = go.Figure()
    for i, (name, fx) in enumerate(effects.items()):
        fig.add_trace(go.Scatter(x=fx.lens_effects.tolist(), y=fx.model_effects.tolist(), mode="markers",
                                 name=f"{name} (Spearman ρ = {fx.spearman:.2f})",
                                 marker={"color": LENS_COLORS[i % len(LENS_COLORS)], "size": 9},
                                 hovertemplate="lens %{x:.3g}, model %{y:.3g} nats<extra></extra>"))
    fig.update_xaxes(title_text="effect on the lens: KL(clean || ablated), nats", type="log")
    fig.update_yaxes(title_text="effect on the model's output, nats", type="log")
    fig.update_layout(title="causal fidelity: ablating each direction", height=420,
                      legend={"orientation": "h", "y": -0.25}, **_LAYOUT)
    return fig


def write_metrics_page(metrics: Mapping[str, Any] | str | os.PathLike, path: str | os.PathLike) -> Path:
    """One offline page with the metric curves of an evaluation and, when measured, its transfer heatmap."""
    data = load_metrics(metrics)
    figures = [metric_curves(data)] + ([transfer_heatmap(data)] if "transfer" in data else [])
    body = "\n".join(figure_html(fig, full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures))
    title = html.escape(f"tl_tunedlens evaluation: {data.get('model', 'model')}")
    write_text_atomic(path, f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
                            f"</head><body>\n{body}\n</body></html>\n")
    return Path(path)
