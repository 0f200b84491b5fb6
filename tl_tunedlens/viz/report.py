"""One offline HTML page for a text: logit-vs-tuned trajectory heatmaps and the circuitsvis view.

plotly.js and the circuitsvis bundle are inlined once each, so the page makes no network
request. ``write_report(path, model, lens, text)`` is what ``tl-tunedlens show`` and
``make demo`` call; with ``sae=`` (an sae-lens SAE on a lens site of an sae-lens model) the page also
shows the SAE experiments of :mod:`tl_tunedlens.analysis.sae` (:mod:`tl_tunedlens.viz.sae`'s figures).
"""

from __future__ import annotations

import datetime
import html
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from ..analysis.sae import ablate_latent, most_active_latent, splice_effect
from ..analysis.trajectory import STATISTICS, PredictionTrajectory, trajectory_pair
from ..artifacts.files import write_text_atomic
from ..core.backend import fit_tokens, truncation
from ..errors import LensError
from ..lens import LogitLens
from ..analysis.readouts import single_token_id
from .circuits import circuitsvis_bundle, lens_view
from .experiments import prediction_depth_figure, trajectory_logit_diff_figure
from .plots import compare_heatmaps, figure_html
from .sae import latent_effect_figure, splice_effect_figure

from ..core.backend import Model

if TYPE_CHECKING:
    from ..lens import Lens

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.meta { color: #555; } .text { background: #f6f6f6; padding: 8px 12px; white-space: pre-wrap; }
table.summary { border-collapse: collapse; } table.summary td, table.summary th { padding: 2px 10px; text-align: right; }
"""


def _summary_table(logit: PredictionTrajectory, tuned: PredictionTrajectory, js_mean: torch.Tensor) -> str:
    rows = ["<tr><th>layer</th><th>KL logit</th><th>KL tuned</th><th>CE logit</th><th>CE tuned</th><th>JS(logit, tuned)</th></tr>"]
    kl_l, kl_t, ce_l, ce_t = logit.mean("kl"), tuned.mean("kl"), logit.mean("ce"), tuned.mean("ce")
    for i, label in enumerate(logit.layer_labels):
        rows.append(f"<tr><td>{html.escape(label)}</td><td>{kl_l[i]:.3f}</td><td>{kl_t[i]:.3f}</td>"
                    f"<td>{ce_l[i]:.3f}</td><td>{ce_t[i]:.3f}</td><td>{js_mean[i]:.3f}</td></tr>")
    return '<table class="summary">' + "".join(rows) + "</table>"


def check_stats(stats: Sequence[str]) -> None:
    """Raise a one-line error for a statistic the report cannot draw."""
    for stat in stats:
        if stat.removeprefix("delta_") not in STATISTICS:
            raise LensError(f"unknown statistic {stat!r}: use some of {', '.join(STATISTICS)} (or delta_<stat>)")


@torch.no_grad()
def report_html(model: Model, lens: "Lens", text: str | torch.Tensor, *,
                logit_lens: "Lens | None" = None, stats: Sequence[str] = ("kl", "entropy", "ce"),
                top_k: int = 5, title: str | None = None, max_tokens: int | None = None,
                truncate: bool = False, contrast: tuple[int | str, int | str] | None = None,
                position: int = -1, sae: Any = None, latent: int | None = None) -> str:
    """The report page as a string (see :func:`write_report`)."""
    check_stats(stats)
    tokens, dropped = fit_tokens(model, text, min_tokens=2, max_tokens=max_tokens, truncate=truncate)
    watch = [single_token_id(getattr(model, "tokenizer", None), t) for t in contrast] if contrast else []
    if not -tokens.shape[1] <= position < tokens.shape[1]:
        raise LensError(f"position {position} is out of range: the text has {tokens.shape[1]} tokens")
    logit_lens = logit_lens or LogitLens.from_model(model, hook_names=lens.hook_names)
    logit, tuned, comparison = trajectory_pair(logit_lens, lens, model, tokens, top_k=max(top_k, 10), watch=watch)
    params = list(lens.parameters())
    if params and all(not p.detach().any() for p in params):  # zero translators: the logit lens exactly
        tuned.lens_name = "tuned lens (untrained = logit lens)"
    name = getattr(model.cfg, "model_name", "model")
    shown = text if isinstance(text, str) and not truncate else " ".join(tuned.input_strings(0))
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title or f'tl_tunedlens report: {name}')}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title or 'Logit lens vs tuned lens')}</h1>",
        f'<p class="meta">model <b>{html.escape(str(name))}</b> ({model.cfg.n_layers} layers, d_model {model.cfg.d_model}), '
        f"{tokens.shape[1]} tokens; written {datetime.datetime.now().isoformat(timespec='seconds')}. "
        "Rows are lens layers (0 = embeddings, last = the model's output); cells show the top-1 "
        "prediction for the next token; hover for the top-k.</p>",
        f'<p class="text">{html.escape(shown)}</p>',
    ]
    if dropped:
        parts.insert(-1, f'<p class="meta"><b>Truncated:</b> {html.escape(truncation(tokens.shape[1], dropped))}.</p>')
    for i, stat in enumerate(stats):
        fig = compare_heatmaps([logit, tuned], stat, top_k=top_k)
        parts.append(f"<h2>{html.escape(fig.layout.title.text or stat)}</h2>")
        fig.update_layout(title=None, width=None, autosize=True, margin={"t": 40})
        parts.append(figure_html(fig, include_plotlyjs=(i == 0), full_html=False,
                                 div_id=f"heatmap-{stat}", default_width="100%", config={"responsive": True}))
    if contrast:
        for fig in (trajectory_logit_diff_figure([logit, tuned], *watch, position=position),
                    prediction_depth_figure([logit, tuned])):
            parts.append(f"<h2>{html.escape(fig.layout.title.text)}</h2>")
            fig.update_layout(title=None)
            parts.append(figure_html(fig, include_plotlyjs=False, full_html=False, default_width="100%"))
    parts.append("<h2>Per-layer averages over positions (nats)</h2>")
    parts.append(_summary_table(logit, tuned, comparison.mean("js")))
    if sae is not None:
        parts += _sae_sections(model, lens, sae, tokens, latent)
    parts.append(f"<script>{circuitsvis_bundle()}</script>")
    parts.append("<h2>Tokens coloured by KL to the output, and top-k predictions per layer (circuitsvis)</h2>")
    for traj in (tuned, logit):
        parts.append(lens_view(traj, "kl").fragment(include_bundle=False))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _sae_sections(model: Model, lens: "Lens", sae: Any, tokens: torch.Tensor, latent: int | None) -> list[str]:
    """The SAE experiments on the report's text: splicing ``sae``, and ablating ``latent`` (default: the most active)."""
    latent = most_active_latent(model, sae, tokens) if latent is None else latent
    figures = {"splice": splice_effect_figure(splice_effect(lens, model, sae, tokens)),
               "latent": latent_effect_figure(ablate_latent(lens, model, sae, tokens, latent))}
    parts = []
    for key, fig in figures.items():
        parts.append(f"<h2>{html.escape(fig.layout.title.text)}</h2>")
        fig.update_layout(title=None, margin={"t": 40})
        parts.append(figure_html(fig, include_plotlyjs=False, full_html=False, div_id=f"sae-{key}"))
    return parts


def write_report(path: str | os.PathLike, model: Model, lens: "Lens", text: str | torch.Tensor,
                 **kwargs: Any) -> Path:
    """Write the offline report for ``text`` (a string, or token ids ``[pos]``/``[1 pos]``):
    logit-vs-tuned heatmaps of ``stats`` (default KL, entropy, CE), a table of per-layer means and
    the circuitsvis views of both lenses. ``kwargs``: ``logit_lens``, ``stats``, ``top_k``, ``title``,
    ``max_tokens`` (a longer text is an error, default: the model's ``n_ctx``) and ``truncate`` (keep
    its last ``max_tokens`` tokens instead); ``contrast=(a, b)`` (single tokens or ids) adds
    ``logit(a) - logit(b)`` per layer at ``position`` and every token's prediction depth, for both
    lenses. ``sae`` (an sae-lens SAE on a lens site;
    the model must be sae-lens's, see :func:`~tl_tunedlens.models.sae.as_sae_transformer`) adds the splice
    effect and the ablation of ``latent`` (default: the latent most active on the text),
    :mod:`tl_tunedlens.analysis.sae`. The page's size grows linearly with the tokens."""
    write_text_atomic(path, report_html(model, lens, text, **kwargs))
    return Path(path)
