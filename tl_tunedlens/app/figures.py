"""The explorer's figures: tokens made visible; the per-layer logit difference of two tokens is
:func:`tl_tunedlens.viz.experiments.logit_difference_figure`, the trajectory heatmaps
:func:`tl_tunedlens.viz.plots.compare_heatmaps`.
"""

from __future__ import annotations

import html

from ..viz.experiments import logit_difference_figure
from ..viz.plots import display_token

__all__ = ["logit_difference_figure", "visible_token"]


def visible_token(text: str) -> str:
    """A token as plain text with whitespace made visible (``\\n``, ``␣`` for a lone space), unescaped."""
    return html.unescape(display_token(text))
