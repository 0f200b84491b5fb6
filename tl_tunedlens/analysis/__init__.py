"""Analysis: what lenses say and how good they are.

- :mod:`.evaluate`: per-layer metrics of the logit and a tuned lens on held-out tokens (:func:`~tl_tunedlens.analysis.evaluate.evaluate_lenses`);
- :mod:`.metrics`: the shape of the metrics JSON and the summaries read from it (:func:`~tl_tunedlens.analysis.metrics.mean_kl`);
- :mod:`.trajectory`: prediction trajectories (layers x positions) and comparisons between lenses;
- :mod:`.stats`: entropy, KL, JS, total variation and ranks of distributions given as log-probs;
- :mod:`.tables`: plain-text tables for the terminal.

May import: :mod:`tl_tunedlens.lens`, :mod:`tl_tunedlens.core`, :mod:`tl_tunedlens.data`, :mod:`tl_tunedlens.errors`.
"""

from .evaluate import evaluate_lenses
from .metrics import EvalMetrics, mean_kl
from .trajectory import PredictionTrajectory, TrajectoryComparison, compare, compare_lenses, trajectory_pair

__all__ = ["evaluate_lenses", "EvalMetrics", "mean_kl", "PredictionTrajectory", "TrajectoryComparison",
           "compare", "compare_lenses", "trajectory_pair"]
