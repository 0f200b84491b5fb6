"""Visual side of tl_tunedlens: circuitsvis displays, plotly figures and the offline HTML report.

- :mod:`.circuits`: circuitsvis views of a trajectory, inline in Jupyter and savable offline;
- :mod:`.plots`: plotly heatmaps of trajectories and curves of evaluation metrics, saved offline (HTML, PNG);
- :mod:`.experiments`: figures of the experiment tools (logit differences, prediction depth, layer transfer,
  causal effects) and the evaluation page;
- :mod:`.sae`: per-layer curves of the SAE experiments (splicing an SAE, ablating or steering a latent);
- :mod:`.report`: one offline HTML page per text (what ``tl-tunedlens show`` writes).

May import: :mod:`tl_tunedlens.analysis`, :mod:`tl_tunedlens.lens`, :mod:`tl_tunedlens.core`,
:mod:`tl_tunedlens.artifacts` (atomic files) and :mod:`tl_tunedlens.errors`.

>>> from tl_tunedlens import TunedLens, load_model
>>> from tl_tunedlens.analysis import PredictionTrajectory
>>> from tl_tunedlens.viz import lens_view, trajectory_heatmap
>>> model = load_model("smollm2-135m")
>>> lens = TunedLens.from_model(model)
>>> traj = PredictionTrajectory.from_model(lens, model, "To be, or not to be")
>>> fig = trajectory_heatmap(traj, "kl")     # plotly figure, top-1 token per cell, top-k on hover
>>> view = lens_view(traj)                   # circuitsvis, inline in Jupyter; view.save("view.html")
>>> type(fig).__name__, type(view).__name__
('Figure', 'CircuitsView')
"""

from .circuits import CircuitsView, colored_tokens_view, lens_view, save_html, top_k_view
from .experiments import (
    causal_effects_figure,
    logit_difference_figure,
    prediction_depth_figure,
    trajectory_logit_diff_figure,
    transfer_heatmap,
    write_metrics_page,
)
from .plots import (
    compare_heatmaps,
    comparison_heatmap,
    load_metrics,
    metric_curves,
    trajectory_heatmap,
    use_offline_renderer,
    write_html,
    write_metric_curves,
    write_png,
)
from .report import report_html, write_report
from .sae import latent_effect_figure, splice_effect_figure

__all__ = [
    "CircuitsView", "colored_tokens_view", "top_k_view", "lens_view", "save_html",
    "trajectory_heatmap", "compare_heatmaps", "comparison_heatmap", "metric_curves", "load_metrics",
    "use_offline_renderer", "write_html", "write_png", "write_metric_curves", "report_html", "write_report",
    "logit_difference_figure", "trajectory_logit_diff_figure", "prediction_depth_figure", "transfer_heatmap",
    "causal_effects_figure", "write_metrics_page",
    "splice_effect_figure", "latent_effect_figure",
]
