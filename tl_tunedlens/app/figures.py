"""The explorer's own figure: the per-layer logit difference of two tokens; and tokens made visible.

The trajectory heatmaps themselves are :func:`tl_tunedlens.viz.compare_heatmaps`.
"""

from __future__ import annotations

import html
from typing import Mapping, Sequence

import plotly.graph_objects as go

from ..viz.plots import display_token

LENS_COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def visible_token(text: str) -> str:
    """A token as plain text with whitespace made visible (``\\n``, ``␣`` for a lone space), unescaped."""
    return html.unescape(display_token(text))


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
                      template="plotly_white", height=360, margin={"t": 60, "l": 70, "r": 20, "b": 50},
                      legend={"orientation": "h", "y": -0.25})
    return fig
