"""Layer transfer (Belrose et al. 2023; the reference's ``eval --transfer``): how well does the
translator of layer ``j`` decode the residual stream of layer ``i``?

:func:`transfer_matrix` returns ``kl[i][j] = KL(model || unembed(ln_final(translator_j(h_i))))``
(nats, mean over held-out positions) for lens layers ``i, j`` in ``layers``. Its diagonal is the
ordinary per-layer KL of :func:`~tl_tunedlens.analysis.evaluate.evaluate_lenses` (the same fused
code scores it: source layer ``i``'s residual is fed to every translator through
:class:`~tl_tunedlens.analysis.evaluate.LensEvaluator`). Cost: ``len(layers)²`` vocabulary products
per position, so pass a few ``layers`` on big models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from ..core.backend import Model, capture_residuals, flatten_tokens
from ..core.layers import normalize_layers
from ..core.vocab import CHUNK_TOKENS
from ..errors import LensError
from .evaluate import LensEvaluator, n_eval_sequences

if TYPE_CHECKING:
    from ..lens import Lens


@torch.no_grad()
def transfer_matrix(model: Model, lens: "Lens", sequences: Int[Tensor, "n_seq seq_len"], *,
                    layers: Sequence[int] | None = None, max_tokens: int | None = None, chunk_tokens: int = CHUNK_TOKENS,
                    micro_batch: int | None = None, progress: bool = False) -> dict[str, Any]:
    """The layer-transfer matrix of ``lens`` on ``sequences`` (see the module docstring), as a JSON-ready
    dict: ``layers`` (lens layers, default all ``0..n_layers-1``), ``hooks`` (their hook names),
    ``kl`` (rows: the residual's layer ``i``; columns: the translator's layer ``j``; nats) and ``tokens``
    (positions scored). ``max_tokens`` / ``chunk_tokens`` / ``micro_batch``: as in ``evaluate_lenses``."""
    from ..core.progress import progress_bar as tqdm

    lens.check_model(model)
    chosen = [i for i in normalize_layers(layers, lens.n_layers) if i < lens.n_layers]
    if not chosen:
        raise LensError(f"transfer needs lens layers with translators: pick some of 0..{lens.n_layers - 1}")
    n_seq = n_eval_sequences(sequences, max_tokens)
    micro = micro_batch or max(1, chunk_tokens // sequences.shape[1])
    evaluators = {i: LensEvaluator({"lens": lens}, lens.unembed, chunk_tokens=chunk_tokens, layers=chosen)
                  for i in chosen}
    names = [lens.hook_names[i] for i in chosen] + [lens.hook_names[-1]]
    for start in tqdm(range(0, n_seq, micro), desc="transfer", disable=not progress, leave=False):
        batch = sequences[start:min(start + micro, n_seq)]
        resids = flatten_tokens(capture_residuals(model, batch, names)[:, :, :-1])
        labels = batch[:, 1:].flatten()
        for row, i in enumerate(chosen):
            # every lens layer reads source layer i's residual; the last row stays the model's own
            source = resids[row].expand(lens.n_layers, *resids.shape[1:])
            evaluators[i].add(torch.cat([source, resids[-1:]]), labels)
    kl = [[max(float(evaluators[i].per_layer["lens"][j, 0] / evaluators[i].count), 0.0) for j in chosen]
          for i in chosen]
    return {"layers": chosen, "hooks": [lens.hook_names[i] for i in chosen], "kl": kl,
            "tokens": int(evaluators[chosen[0]].count)}
