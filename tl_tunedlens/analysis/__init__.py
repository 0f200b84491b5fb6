"""Analysis: what lenses say and how good they are.

- :mod:`.evaluate`: per-layer metrics of the logit and a tuned lens on held-out tokens (:func:`~tl_tunedlens.analysis.evaluate.evaluate_lenses`, :class:`~tl_tunedlens.analysis.evaluate.LensEvaluator`);
- :mod:`.metrics`: the shape of the metrics JSON and the summaries read from it (:func:`~tl_tunedlens.analysis.metrics.mean_kl`);
- :mod:`.trajectory`: prediction trajectories (layers x positions) and comparisons between lenses;
- :mod:`.readouts`: what a trajectory gives beyond its statistics: logit differences, position slices, prediction depth;
- :mod:`.transfer`: the layer-transfer matrix (translator ``j`` on the residual of layer ``i``);
- :mod:`.causal`: causal bases of a lens layer, ablation effects on the lens and on the model, their rank correlation;
- :mod:`.stats`: entropy, KL, JS, total variation and ranks of distributions given as log-probs;
- :mod:`.tables`: plain-text tables for the terminal;
- :mod:`.sae`: lenses and sae-lens SAEs together: the per-layer effect of splicing an SAE, of ablating or steering a latent.

May import: :mod:`tl_tunedlens.lens`, :mod:`tl_tunedlens.core`, :mod:`tl_tunedlens.data`, :mod:`tl_tunedlens.errors`,
and the fused vocabulary products of :mod:`tl_tunedlens.training` (evaluation shares them with training).
"""

from .evaluate import LensEvaluator, evaluate_lenses
from .metrics import EvalMetrics, mean_kl
from .causal import CausalBasis, CausalEffects, ablation_effects, causal_basis, spearman
from .sae import LatentEffect, SpliceEffect, ablate_latent, most_active_latent, splice_effect, steer_latent
from .transfer import transfer_matrix
from .trajectory import PredictionTrajectory, TrajectoryComparison, compare, compare_lenses, trajectory_pair

__all__ = ["evaluate_lenses", "LensEvaluator", "EvalMetrics", "mean_kl", "PredictionTrajectory", "TrajectoryComparison",
           "compare", "compare_lenses", "trajectory_pair", "transfer_matrix", "causal_basis", "ablation_effects",
           "spearman", "CausalBasis", "CausalEffects", "splice_effect", "ablate_latent", "steer_latent",
           "most_active_latent", "SpliceEffect", "LatentEffect"]
