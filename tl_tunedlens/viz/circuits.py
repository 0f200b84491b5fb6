"""circuitsvis displays of a prediction trajectory, inline in Jupyter and savable offline.

Every function returns a :class:`CircuitsView`, a ``circuitsvis`` ``RenderedHTML`` whose HTML
always inlines the circuitsvis JavaScript bundle (no CDN request, also in Jupyter, where plain
circuitsvis renders probe the internet first). ``view.save(path)`` writes a standalone page.

- :func:`colored_tokens_view`: the prompt coloured by a statistic, one colouring per layer
  (``circuitsvis.tokens.colored_tokens_multi``);
- :func:`top_k_view`: one layer's top-k next-token predictions per token, with the rank and
  log-prob of the actual next token (circuitsvis ``TokenLogProbs``);
- :func:`lens_view`: both, with a layer selector for the top-k view.
"""

from __future__ import annotations

import html
import json
import math
import os
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

from circuitsvis.utils.render import RenderedHTML

from ..analysis.trajectory import STATISTICS, PredictionTrajectory
from ..artifacts.files import write_text_atomic
from ..errors import LensError


@lru_cache(maxsize=1)
def circuitsvis_bundle() -> str:
    """The circuitsvis browser bundle (an IIFE defining ``CircuitsVis``), safe to inline in ``<script>``."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.is_file():
        raise LensError(f"the circuitsvis bundle {path} is missing: reinstall circuitsvis")
    text = path.read_text(encoding="utf-8")
    # no source-map fetch, and no early end of the inline <script>
    text = "\n".join(line for line in text.splitlines() if not line.startswith("//# sourceMappingURL="))
    return text.replace("</script", "<\\/script")


def _clean(value: Any) -> Any:
    """JSON-safe props: NaN/inf become null-free finite numbers (circuitsvis expects numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else 0.0
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def _props_js(props: dict[str, Any]) -> str:
    return json.dumps(_clean(props), allow_nan=False).replace("</", "<\\/")


class CircuitsView(RenderedHTML):
    """One or more circuitsvis components as offline HTML (bundle inlined once)."""

    def __init__(self, components: list[tuple[str, dict[str, Any]]], *, title: str = "",
                 selector: list[str] | None = None, first_selected: int = 0):
        self.components = components
        self.title = title
        self.selector = selector  # labels: components[1:] are switched by a <select>
        self.first_selected = first_selected
        src = self.fragment()
        super().__init__(local_src=src, cdn_src=src)

    def fragment(self, *, include_bundle: bool = True) -> str:
        """An HTML fragment (``<div>`` + ``<script>``); ``include_bundle=False`` leaves out the
        bundle when a page already has it (see :func:`circuitsvis_bundle`)."""
        uid = "tlv-" + uuid.uuid4().hex[:10]
        parts = [f'<div class="tl-circuitsvis" id="{uid}">']
        if self.title:
            parts.append(f"<h3>{html.escape(self.title)}</h3>")
        calls = []
        for i, (name, props) in enumerate(self.components):
            div = f"{uid}-{i}"
            hidden = self.selector is not None and i >= 1 and i - 1 != self.first_selected
            if self.selector is not None and i == 1:
                options = "".join(
                    f'<option value="{j}"{" selected" if j == self.first_selected else ""}>{html.escape(label)}</option>'
                    for j, label in enumerate(self.selector))
                parts.append(
                    f'<p><label>top-k predictions of layer <select id="{uid}-select" onchange="'
                    f"for (const d of document.querySelectorAll('#{uid} .tl-layer')) d.style.display = "
                    f"(d.dataset.layer === this.value) ? '' : 'none';\">{options}</select></label></p>")
            cls = ' class="tl-layer"' if self.selector is not None and i >= 1 else ""
            data = f' data-layer="{i - 1}"' if cls else ""
            style = ' style="display: none"' if hidden else ""
            parts.append(f'<div id="{div}"{cls}{data}{style}></div>')
            calls.append(f'CircuitsVis.render("{div}", CircuitsVis.{name}, {_props_js(props)});')
        parts.append("</div>")
        bundle = f"<script>{circuitsvis_bundle()}</script>\n" if include_bundle else ""
        return "\n".join(parts) + "\n" + bundle + "<script>\n" + "\n".join(calls) + "\n</script>"

    def _repr_html_(self) -> str:  # always offline
        return self.local_src

    def page(self, title: str | None = None) -> str:
        """A standalone HTML page."""
        title = html.escape(title or self.title or "tl_tunedlens")
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>\n'
                f"<body>\n{self.local_src}\n</body></html>\n")

    def save(self, path: str | os.PathLike, title: str | None = None) -> Path:
        """Write a standalone offline HTML page (atomically); returns the path."""
        write_text_atomic(path, self.page(title))
        return Path(path)


def colored_tokens_props(traj: PredictionTrajectory, stat: str = "kl", index: int = 0) -> dict[str, Any]:
    """Props of circuitsvis ``ColoredTokensMulti``: the prompt's tokens and ``stat`` at every layer."""
    index = traj.prompt_index(index)
    values = traj.statistic(stat)[:, index].nan_to_num(0.0)  # [row pos]
    labels = [f"{stat} @ layer {label}" for label in traj.row_labels(stat)]
    return {"tokens": traj.input_strings(index), "values": values.T.tolist(), "labels": labels}


def top_k_props(traj: PredictionTrajectory, layer: int = -1, index: int = 0) -> dict[str, Any]:
    """Props of circuitsvis ``TokenLogProbs`` for one lens layer (its first token is not shown)."""
    index = traj.prompt_index(index)
    if not -traj.n_rows <= layer < traj.n_rows:
        raise LensError(f"layer {layer} is out of range: the trajectory has rows 0..{traj.n_rows - 1}")
    if traj.n_pos < 2:
        raise LensError("the top-k view needs at least two tokens")
    top_lp = traj.top_k_log_probs[layer, index, :-1]
    top_ids = traj.top_k_indices[layer, index, :-1]
    return {
        "prompt": traj.input_strings(index),
        "topKLogProbs": top_lp.tolist(),
        "topKTokens": [[traj.decode(t) for t in row] for row in top_ids.tolist()],
        "correctTokenRank": (traj.target_ranks[layer, index, :-1] - 1).clamp_min(0).tolist(),  # 0-based there
        "correctTokenLogProb": traj.target_log_probs[layer, index, :-1].nan_to_num(-1e9).tolist(),
    }


def colored_tokens_view(traj: PredictionTrajectory, stat: str = "kl", index: int = 0) -> CircuitsView:
    """Prompt ``index`` coloured by ``stat`` (see ``STATISTICS``), one colouring per layer."""
    title = f"{traj.lens_name}: {STATISTICS.get(stat, (stat,))[0]} per token and layer"
    return CircuitsView([("ColoredTokensMulti", colored_tokens_props(traj, stat, index))], title=title)


def top_k_view(traj: PredictionTrajectory, layer: int = -1, index: int = 0) -> CircuitsView:
    """Lens layer ``layer``'s top-k predictions at every token of prompt ``index`` (hover a token)."""
    props = top_k_props(traj, layer, index)
    label = traj.layer_labels[layer]
    return CircuitsView([("TokenLogProbs", props)],
                        title=f"{traj.lens_name}: top-{traj.top_k_indices.shape[-1]} predictions at layer {label}")


def lens_view(traj: PredictionTrajectory, stat: str = "kl", index: int = 0, layers: list[int] | None = None) -> CircuitsView:
    """Coloured tokens (``stat`` per layer) plus every layer's top-k view behind a layer selector
    (``layers``: which rows to offer, default all; the last one is shown first)."""
    rows = list(range(traj.n_rows)) if layers is None else [r % traj.n_rows for r in layers]
    components = [("ColoredTokensMulti", colored_tokens_props(traj, stat, index))]
    components += [("TokenLogProbs", top_k_props(traj, r, index)) for r in rows]
    return CircuitsView(components, title=f"{traj.lens_name}: {STATISTICS.get(stat, (stat,))[0]} and top-k predictions",
                        selector=[traj.layer_labels[r] for r in rows], first_selected=len(rows) - 1)


def save_html(view: RenderedHTML, path: str | os.PathLike, title: str = "tl_tunedlens") -> Path:
    """Save any circuitsvis render as a standalone offline page (its inlined ``local_src``)."""
    if isinstance(view, CircuitsView):
        return view.save(path, title)
    body = view.local_src.replace("\n//# sourceMappingURL=iife.js.map", "")
    write_text_atomic(path, f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
                            f"</title></head>\n<body>\n{body}\n</body></html>\n")
    return Path(path)
