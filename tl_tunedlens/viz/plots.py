"""plotly figures: trajectory heatmaps, logit-vs-tuned side by side, evaluation metric curves.

- :func:`trajectory_heatmap`: layers x positions of one statistic, the top-1 token in each cell
  and the top-k predictions on hover;
- :func:`compare_heatmaps`: several trajectories (e.g. logit and tuned lens) side by side on one
  colour scale;
- :func:`metric_curves`: per-layer KL and cross-entropy from the evaluation JSON
  (``tl-tunedlens eval``), logit vs tuned lens;
- :func:`write_html` (offline: plotly.js inlined) and :func:`write_png` (needs ``kaleido`` and a
  Chrome/Chromium browser).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..analysis.metrics import LENS_NAMES
from ..analysis.trajectory import COMPARISONS, STATISTICS, PredictionTrajectory, TrajectoryComparison
from ..artifacts.files import atomic_path, write_text_atomic
from ..errors import LensError, first_line


def display_token(text: str) -> str:
    """A token made safe and visible for plotly's pseudo-HTML text (escapes, visible newlines)."""
    text = text.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    if not text.strip():
        text = text.replace(" ", "\u2423") or "\u2205"  # visible space; empty set for ''
    return html.escape(text, quote=False)


def _stat_title(stat: str) -> tuple[str, str]:
    base = stat.removeprefix("delta_")
    title, unit = STATISTICS.get(base) or COMPARISONS.get(base) or (base, "")
    if stat.startswith("delta_"):
        title = f"change in {title} from layer l to l+1"
    return title, unit


def _color_args(stat: str, z: list[list[float | None]]) -> dict[str, Any]:
    """Colour scale of a statistic. Nats statistics are capped at the largest value above the
    embedding row (row 0 is often far off the scale, e.g. KL ~100 nats); hover shows true values."""
    if stat.startswith("delta_"):
        return {"colorscale": "RdBu_r", "zmid": 0.0}
    if stat in ("prob", "max_prob", "tv"):
        return {"colorscale": "Viridis", "zmin": 0.0, "zmax": 1.0}
    rows = z[1:] if len(z) > 2 and stat in ("kl", "ce", "entropy", "kl_step") else z
    finite = [v for row in rows for v in row if v is not None]
    args: dict[str, Any] = {"colorscale": "Viridis_r", "zmin": 0.0}
    if finite and max(finite) > 0:
        args["zmax"] = max(finite)
    return args


def _heatmap(traj: PredictionTrajectory, stat: str, index: int, top_k: int, coloraxis: str | None) -> go.Heatmap:
    index = traj.prompt_index(index)
    values = traj.statistic(stat)[:, index].float()  # [row pos]
    delta = stat.startswith("delta_") or stat == "kl_step"
    rows = list(range(1, traj.n_rows)) if delta else list(range(traj.n_rows))  # which layer's top-k to show
    labels = traj.row_labels(stat)
    inputs = traj.input_strings(index)
    k = min(top_k, traj.top_k_indices.shape[-1])
    title, unit = _stat_title(stat)
    title = title.replace("next token", traj.target_label)
    # plain lists first: indexing tensors cell by cell costs more than the rest of the figure
    top_ids = traj.top_k_indices[:, index, :, :k].tolist()  # [layer pos k]
    top_lps = traj.top_k_log_probs[:, index, :, :k].tolist()
    target_lps, target_ranks = traj.target_log_probs[:, index].tolist(), traj.target_ranks[:, index].tolist()
    targets, values = traj.targets[index].tolist(), values.tolist()
    shown = {}  # token id -> its display text

    def show(token_id: int) -> str:
        if token_id not in shown:
            shown[token_id] = display_token(traj.decode(token_id))
        return shown[token_id]

    z, text, hover = [], [], []
    for r, layer in enumerate(rows):
        z_row, text_row, hover_row = [], [], []
        for pos in range(traj.n_pos):
            value = float(values[r][pos])
            z_val = value if math.isfinite(value) else None
            if stat == "rank" and z_val is not None:
                z_val = math.log10(z_val)
            z_row.append(z_val)
            ids, lps = top_ids[layer][pos], top_lps[layer][pos]
            text_row.append(show(ids[0]))
            target = targets[pos]
            lines = [f"<b>layer {html.escape(labels[r])}</b>, position {pos}: {display_token(inputs[pos])!r}",
                     f"{html.escape(title)} = {value:.4g} {unit if unit not in ('rank', 'probability') else ''}".rstrip()]
            if target >= 0:
                lines.append(f"{html.escape(traj.target_label)} {show(target)!r}: "
                             f"p = {math.exp(target_lps[layer][pos]):.3g}, rank {int(target_ranks[layer][pos])}")
            lines.append(f"top-{k} at layer {html.escape(traj.layer_labels[layer])}:")
            lines += [f"  {j + 1}. {show(t)!r}  {math.exp(lp):.3f}" for j, (t, lp) in enumerate(zip(ids, lps))]
            hover_row.append("<br>".join(lines))
        z.append(z_row)
        text.append(text_row)
        hover.append(hover_row)
    trace = go.Heatmap(
        z=z, x=list(range(traj.n_pos)), y=list(range(len(rows))), text=text, customdata=hover,
        texttemplate="%{text}", textfont={"size": 9}, hovertemplate="%{customdata}<extra></extra>",
        xgap=1, ygap=1, name=traj.lens_name,
    )
    if coloraxis:
        trace.update(coloraxis=coloraxis)
    else:
        trace.update(**_color_args(stat, z), colorbar=_colorbar(stat, unit))
    return trace


def _colorbar(stat: str, unit: str) -> dict[str, Any]:
    bar: dict[str, Any] = {"title": {"text": unit if unit not in ("rank",) else "rank"}}
    if stat == "rank":
        bar.update(tickvals=[0, 1, 2, 3, 4, 5], ticktext=["1", "10", "100", "1k", "10k", "100k"])
    return bar


def _axes(fig: go.Figure, traj: PredictionTrajectory, stat: str, index: int, col: int = 1) -> None:
    labels = traj.row_labels(stat)
    fig.update_yaxes(tickvals=list(range(len(labels))), ticktext=labels, title_text="layer", row=1, col=col)
    fig.update_xaxes(tickvals=list(range(traj.n_pos)), ticktext=[display_token(s) for s in traj.input_strings(index)],
                     tickangle=-45, title_text="input token", row=1, col=col)


def _size(traj: PredictionTrajectory, n_panels: int = 1) -> dict[str, int]:
    cell = 62 if n_panels == 1 else 48
    return {"width": int(min(2400, 220 + n_panels * (80 + cell * traj.n_pos))),
            "height": int(min(1600, 230 + 22 * traj.n_rows))}


def trajectory_heatmap(traj: PredictionTrajectory, stat: str = "kl", index: int = 0, *,
                       top_k: int = 5, title: str | None = None) -> go.Figure:
    """Heatmap of ``traj.statistic(stat)`` for prompt ``index``: layers (rows, last = output) x
    positions, the top-1 token written in each cell, the top-``top_k`` tokens on hover. ``rank``
    is coloured on a log scale; ``delta_<stat>`` on a diverging scale centred at 0."""
    fig = make_subplots(rows=1, cols=1)
    fig.add_trace(_heatmap(traj, stat, index, top_k, None), row=1, col=1)
    _axes(fig, traj, stat, index)
    stat_title, unit = _stat_title(stat)
    fig.update_layout(title=title or f"{traj.lens_name}: {stat_title}" + (f" ({unit})" if unit == "nats" else ""),
                      template="plotly_white", **_size(traj))
    return fig


def compare_heatmaps(trajs: Sequence[PredictionTrajectory], stat: str = "kl", index: int = 0, *,
                     top_k: int = 5, title: str | None = None) -> go.Figure:
    """Trajectories (e.g. logit lens and tuned lens of one prompt) side by side, one colour scale."""
    if not trajs:
        raise LensError("compare_heatmaps needs at least one trajectory")
    fig = make_subplots(rows=1, cols=len(trajs), subplot_titles=[t.lens_name for t in trajs],
                        horizontal_spacing=0.08, shared_yaxes=False)
    traces = [_heatmap(t, stat, index, top_k, "coloraxis") for t in trajs]
    for col, (trace, traj) in enumerate(zip(traces, trajs), start=1):
        fig.add_trace(trace, row=1, col=col)
        _axes(fig, traj, stat, index, col)
    stat_title, unit = _stat_title(stat)
    color = _color_args(stat, [[v for tr in traces for v in tr.z[r]] for r in range(len(traces[0].z))])
    axis = {"colorscale": color["colorscale"], "colorbar": _colorbar(stat, unit)}
    if "zmid" in color:
        axis["cmid"] = color["zmid"]
    else:
        axis["cmin"], axis["cmax"] = color.get("zmin"), color.get("zmax")
    fig.update_layout(coloraxis=axis, template="plotly_white",
                      title=title or f"{stat_title}" + (f" ({unit})" if unit == "nats" else "") + ": " +
                      " vs ".join(t.lens_name for t in trajs), **_size(trajs[0], len(trajs)))
    return fig


def comparison_heatmap(comparison: TrajectoryComparison, name: str = "js", index: int = 0,
                       input_labels: Sequence[str] | None = None) -> go.Figure:
    """Heatmap of a divergence between two lenses (``kl``, ``js`` or ``tv``) for prompt ``index``."""
    values = comparison.statistic(name)[:, index]
    title, unit = COMPARISONS[name]
    fig = go.Figure(go.Heatmap(z=values.tolist(), colorscale="Viridis", zmin=0.0, colorbar={"title": {"text": unit}},
                               hovertemplate="layer %{y}, position %{x}: %{z:.4g}<extra></extra>"))
    fig.update_yaxes(tickvals=list(range(len(comparison.layer_labels))), ticktext=comparison.layer_labels, title_text="layer")
    if input_labels is not None:
        fig.update_xaxes(tickvals=list(range(len(input_labels))), ticktext=[display_token(s) for s in input_labels])
    fig.update_layout(title=f"{title} ({unit}): {comparison.names[0]} vs {comparison.names[1]}", template="plotly_white")
    return fig


# --- evaluation metric curves -------------------------------------------------------------------
def load_metrics(metrics: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """The evaluation JSON (a dict, or a path to one), checked for the keys the curves need."""
    if not isinstance(metrics, Mapping):
        path = Path(metrics)
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LensError(f"no metrics file at {path}: run `tl-tunedlens eval ... --out {path}` first") from None
        except json.JSONDecodeError as err:
            raise LensError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    layers = metrics.get("layers") if isinstance(metrics, Mapping) else None
    if not isinstance(layers, list) or not layers or not all(isinstance(r, Mapping) and "layer" in r and "logit" in r for r in layers):
        raise LensError('the metrics need a non-empty "layers" list of {"layer": i, "logit": {...}, "tuned": {...}} '
                         "entries, as written by tl-tunedlens eval")
    return dict(metrics)


def _metric(entry: Mapping[str, Any], key: str, unit: str) -> float | None:
    source = entry.get("bits_per_byte", {}) if unit == "bits_per_byte" else entry
    value = source.get(key) if isinstance(source, Mapping) else None
    return float(value) if isinstance(value, (int, float)) else None


def metric_curves(metrics: Mapping[str, Any] | str | os.PathLike, *, keys: Sequence[str] = ("kl", "ce"),
                  unit: str = "nats") -> go.Figure:
    """Per-layer curves of evaluation metrics (default KL to the output and cross-entropy), logit
    vs tuned lens, one panel per key; ``unit``: ``"nats"`` or ``"bits_per_byte"``. The model's own
    cross-entropy / entropy (``baseline``) is drawn as a dashed line on those panels."""
    if unit not in ("nats", "bits_per_byte"):
        raise LensError(f"unit must be 'nats' or 'bits_per_byte', got {unit!r}")
    data = load_metrics(metrics)
    names = {"kl": "KL(output || lens)", "ce": "cross-entropy", "entropy": "entropy", "top1": "top-1 agreement"}
    unit_label = "bits/byte" if unit == "bits_per_byte" else "nats"
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=[names.get(k, k) for k in keys], horizontal_spacing=0.1)
    colors = {"logit": "#d62728", "tuned": "#1f77b4"}
    layers = [int(r["layer"]) for r in data["layers"]]
    for col, key in enumerate(keys, start=1):
        for lens in LENS_NAMES:
            ys = [_metric(r[lens], key, unit) if isinstance(r.get(lens), Mapping) else None for r in data["layers"]]
            if all(y is None for y in ys):
                continue
            fig.add_trace(go.Scatter(x=layers, y=ys, mode="lines+markers", name=f"{lens} lens",
                                     line={"color": colors[lens]}, legendgroup=lens, showlegend=col == 1,
                                     hovertemplate=f"{lens} lens, layer %{{x}}: %{{y:.4g}} {unit_label}<extra></extra>"),
                          row=1, col=col)
        baseline = data.get("baseline") or {}
        base = _metric(baseline, key, unit) if key in ("ce", "entropy") else None
        if base is not None:
            fig.add_trace(go.Scatter(x=[min(layers), max(layers)], y=[base, base], mode="lines", name="model output",
                                     line={"color": "gray", "dash": "dash"}, legendgroup="model",
                                     showlegend=key == [k for k in keys if k in ("ce", "entropy")][0]), row=1, col=col)
        fig.update_xaxes(title_text="layer", row=1, col=col)
        fig.update_yaxes(title_text="fraction" if key == "top1" else unit_label, rangemode="tozero", row=1, col=col)
    tokens = data.get("tokens")
    fig.update_layout(title=f"{data.get('model', 'model')}: lens quality per layer"
                      + (f" ({tokens} tokens)" if tokens else ""), template="plotly_white",
                      width=max(520, 460 * len(keys)), height=430)
    return fig


# --- saving -------------------------------------------------------------------------------------
# plotly.js builds one absolute URL of its own: map-symbol icons from a CDN (map traces only, which
# these pages never draw). Point it at an empty data: URL so a saved page names no network address.
_PLOTLY_CDN_ICONS = re.compile(r"https://cdn\.jsdelivr\.net/npm/@mapbox/maki@[0-9.]+/icons/")


def offline_html(page: str) -> str:
    """``page`` (plotly HTML with plotly.js inlined) with plotly.js's CDN icon URL neutralised."""
    return _PLOTLY_CDN_ICONS.sub("data:,", page)


def figure_html(fig: go.Figure, *, full_html: bool = True, include_plotlyjs: bool = True, **kwargs: Any) -> str:
    """HTML of a figure with plotly.js inlined (``include_plotlyjs``), no MathJax, no CDN."""
    return offline_html(fig.to_html(include_plotlyjs=include_plotlyjs, full_html=full_html, include_mathjax=False, **kwargs))


class OfflineNotebookRenderer:
    """A plotly renderer for Jupyter that inlines plotly.js in every figure's HTML output: no CDN,
    no MathJax (plotly's own ``notebook`` renderer loads MathJax from a CDN). About 5 MB per figure."""

    def __new__(cls):
        from plotly.io.base_renderers import MimetypeRenderer

        class _Renderer(MimetypeRenderer):
            def to_mimebundle(self, fig_dict):
                return {"text/html": figure_html(go.Figure(fig_dict), full_html=False)}

        return _Renderer()


def use_offline_renderer(name: str = "tl_offline") -> None:
    """Register :class:`OfflineNotebookRenderer` as ``name`` and make it plotly's default renderer,
    so figures shown in Jupyter work without internet."""
    import plotly.io as pio

    pio.renderers[name] = OfflineNotebookRenderer()
    pio.renderers.default = name


def write_html(fig: go.Figure, path: str | os.PathLike) -> Path:
    """A standalone HTML page with plotly.js inlined (works offline), written atomically."""
    write_text_atomic(path, figure_html(fig))
    return Path(path)


def write_png(fig: go.Figure, path: str | os.PathLike, *, scale: float = 1.0) -> Path:
    """A PNG through kaleido (which drives a Chrome/Chromium: Debian ``chromium``, or ``$BROWSER_PATH``)."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise LensError("PNG export needs kaleido: pip install 'tl-tunedlens[viz]' (or kaleido)") from None
    try:
        with atomic_path(path) as tmp:
            fig.write_image(str(tmp), format="png", scale=scale)
    except (RuntimeError, ValueError, OSError) as err:
        if isinstance(err, LensError):
            raise
        raise LensError(f"PNG export failed ({first_line(err)}): kaleido needs Chrome/Chromium, e.g. apt-get install chromium, "
                        "or set BROWSER_PATH") from None
    return Path(path)


def write_metric_curves(metrics: Mapping[str, Any] | str | os.PathLike, out_html: str | os.PathLike | None = None,
                        out_png: str | os.PathLike | None = None, *, keys: Sequence[str] = ("kl", "ce"),
                        unit: str = "nats") -> go.Figure:
    """:func:`metric_curves` of an evaluation JSON (dict or path), saved to ``out_html`` and/or ``out_png``."""
    fig = metric_curves(metrics, keys=keys, unit=unit)
    if out_html is not None:
        write_html(fig, out_html)
    if out_png is not None:
        write_png(fig, out_png)
    return fig
