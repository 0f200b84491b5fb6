"""Figures of the SAE experiments (:mod:`tl_tunedlens.analysis.sae`): per-layer curves with the SAE's site marked.

- :func:`splice_effect_figure`: the lens's KL to the clean output per layer, without the SAE, spliced,
  and with the error term;
- :func:`latent_effect_figure`: for an ablated or steered latent, the mean KL to the unedited lens
  prediction and the fraction of changed top-1 tokens per layer, where the latent fires.

:func:`~tl_tunedlens.viz.report.write_report` adds both to the report page when given ``sae=``.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..analysis.sae import LatentEffect, SpliceEffect
from ..core.layers import layer_labels

_SPLICE_LINES = {"clean": ("no SAE", "#7f7f7f", "dash"), "spliced": ("SAE spliced in", "#d62728", "solid"),
                 "error_term": ("SAE + error term", "#1f77b4", "dot")}


def _layer_axis(fig: go.Figure, n_layers: int, site_layer: int, site: str, **where) -> None:
    """Layer ticks (the last one ``output``) and a dashed vertical line at the SAE's lens layer."""
    labels = layer_labels(n_layers)
    step = max(1, n_layers // 15)
    ticks = sorted(set(range(0, n_layers + 1, step)) | {n_layers})
    fig.update_xaxes(title_text="lens layer", tickvals=ticks, ticktext=[labels[i] for i in ticks], **where)
    fig.add_vline(x=site_layer, line={"color": "#2ca02c", "dash": "dash"}, annotation_text=f"SAE at {site}",
                  annotation_position="top right", annotation_font={"size": 10, "color": "#2ca02c"}, **where)


def splice_effect_figure(effect: SpliceEffect, *, title: str | None = None) -> go.Figure:
    """Mean KL (nats) of the lens to the clean output per layer: no SAE, SAE spliced, SAE + error term."""
    means = effect.mean()
    n_layers = len(means["clean"]) - 1
    fig = go.Figure()
    for key, (name, color, dash) in _SPLICE_LINES.items():
        fig.add_trace(go.Scatter(x=list(range(n_layers + 1)), y=means[key].tolist(), mode="lines+markers", name=name,
                                 line={"color": color, "dash": dash},
                                 hovertemplate=f"{name}, layer %{{x}}: %{{y:.4g}} nats<extra></extra>"))
    _layer_axis(fig, n_layers, effect.site_layer, effect.site)
    fig.update_yaxes(title_text="KL(clean output || lens), nats", rangemode="tozero")
    fig.update_layout(title=title or f"Splicing the SAE at {effect.site}: lens KL to the clean output",
                      template="plotly_white", width=760, height=430)
    return fig


def latent_effect_figure(effect: LatentEffect, *, title: str | None = None) -> go.Figure:
    """Per layer, over the positions where the latent fires (ablation) or all (steering): the mean KL
    (nats) from the unedited lens prediction and the fraction of positions whose top-1 token changed."""
    summary = effect.summary()
    n_layers = len(summary["kl"]) - 1
    where = "where it fires" if effect.edit == "ablate" else "all positions"
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=[f"KL(unedited || edited), mean {where}", f"top-1 changed, {where}"])
    for col, (key, unit) in enumerate((("kl", "nats"), ("top1_changed", "fraction")), start=1):
        fig.add_trace(go.Scatter(x=list(range(n_layers + 1)), y=summary[key].tolist(), mode="lines+markers",
                                 showlegend=False, line={"color": "#9467bd"},
                                 hovertemplate=f"layer %{{x}}: %{{y:.4g}} {unit}<extra></extra>"), row=1, col=col)
        _layer_axis(fig, n_layers, effect.site_layer, effect.site, row=1, col=col)
        fig.update_yaxes(title_text=unit, rangemode="tozero", row=1, col=col)
    verb = "Ablating" if effect.edit == "ablate" else "Steering"
    fires = int((effect.acts > 0).sum())
    fig.update_layout(title=title or f"{verb} latent {effect.latent} of the SAE at {effect.site} "
                                     f"(fires at {fires} of {effect.acts.numel()} positions)",
                      template="plotly_white", width=1000, height=430)
    return fig
