"""The interactive lens explorer (``tl-tunedlens serve``): type text, see every layer's prediction.

- :mod:`.explorer`: :class:`~tl_tunedlens.app.explorer.Explorer`, the model and its lenses loaded once, answering the page's
  queries (trajectories, heatmaps, logit differences, one position's table) with bounded inputs;
- :mod:`.query`: one request of the page and its bounds;
- :mod:`.progressive`: ``POST /api/stream``, answers row block by row block, the model's output row first;
  a newer request from the same page cancels the older one;
- :mod:`.figures`: the explorer's own figure (per-layer logit difference of two tokens);
- :mod:`.server`: the local web server (werkzeug) and the page it serves (``static/``).

May import: :mod:`tl_tunedlens.viz`, :mod:`tl_tunedlens.analysis`, :mod:`tl_tunedlens.lens`,
:mod:`tl_tunedlens.core`, :mod:`tl_tunedlens.models`, :mod:`tl_tunedlens.artifacts`, :mod:`tl_tunedlens.errors`.
"""

from .explorer import STAT_CHOICES, Explorer, Limits, Query

__all__ = ["Explorer", "Limits", "Query", "STAT_CHOICES"]
