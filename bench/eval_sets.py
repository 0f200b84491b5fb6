"""Held-out evaluation sets shared by the quality benches: each training corpus's held-out documents and a
corpus never trained on (Python's help topics, ``pydoc``), their residuals captured once.

``EvalSets(model, n_seqs).kl(lens)`` gives ``{set name: mean KL(model || lens) over layers 1..n-1}`` (nats,
exact: fp32, full vocabulary, every position with a next token), via the package's own evaluator.
"""

from __future__ import annotations

import torch

SEQ_LEN = 256
#: name -> (--data source, split): the held-out documents of each training corpus, and all of pydoc
SETS = {"shakespeare": ("shakespeare", "heldout"), "fortunes": ("fortunes", "heldout"), "pydoc": ("pydoc", "all")}


class EvalSets:
    def __init__(self, model, n_seqs: int = 4, names=tuple(SETS)):
        from tl_tunedlens import LogitLens
        from tl_tunedlens.core.backend import capture_residuals, flatten_tokens
        from tl_tunedlens.data import load_tokens

        self.hook_names = LogitLens.from_model(model).hook_names
        self.sets = {}
        for name in names:
            source, split = SETS[name]
            data = load_tokens(source, model.tokenizer, SEQ_LEN, split=split, max_tokens=n_seqs * SEQ_LEN)
            resids = torch.cat([flatten_tokens(capture_residuals(model, data.sequences[i:i + 2], self.hook_names)[:, :, :-1])
                                for i in range(0, len(data.sequences), 2)], 1)
            self.sets[name] = (resids, data.sequences[:, 1:].flatten(), data)

    def describe(self) -> str:
        return "; ".join(f"{name}: {r.shape[1]} positions from {len(d.documents)} documents ({SETS[name][1]})"
                         for name, (r, _, d) in self.sets.items())

    def per_layer(self, lens, name: str) -> list[float]:
        from tl_tunedlens.analysis import LensEvaluator

        resids, labels, _ = self.sets[name]
        evaluator = LensEvaluator({"lens": lens}, lens.unembed)
        evaluator.add(resids, labels)
        metrics = evaluator.metrics("", self.hook_names, float("nan"))
        return [e["lens"]["kl"] for e in metrics["layers"][:-1]]

    def kl(self, lens) -> dict[str, float]:
        out = {}
        for name in self.sets:
            layers = self.per_layer(lens, name)[1:]
            out[name] = sum(layers) / len(layers)
        return out
