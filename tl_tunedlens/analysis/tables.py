"""Plain-text tables for the terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import torch
from torch import Tensor

from ..core.hooks import LensRecord, as_positions, check_positions
from ..errors import LensError
from .metrics import lenses_in

from ..core.backend import Model

if TYPE_CHECKING:
    from ..lens import Lens


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A fixed-width table: right-aligned numbers, left-aligned text."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def token_str(tokenizer, token_id: int) -> str:
    """A token as readable text (``repr``-style escapes for whitespace)."""
    text = tokenizer.decode([int(token_id)]) if tokenizer is not None else f"<{int(token_id)}>"
    return repr(text)[1:-1] if text.strip() != text or "\n" in text else text


@torch.no_grad()
def prediction_table(model: Model, lenses: Mapping[str, "Lens"], tokens: Tensor, *, position: int = -1, top_k: int = 1) -> str:
    """Per lens layer, each lens's top-``top_k`` next-token predictions (with probabilities) and its
    KL to the model's final distribution (nats) at ``position`` of a single prompt ``tokens [1, pos]``.

    Uses the hooks route: one ``run_with_hooks`` pass records every lens at that position."""
    check_positions(as_positions(position), tokens.shape[-1])
    any_lens = next(iter(lenses.values()))
    if not 1 <= top_k <= any_lens.d_vocab:
        raise LensError(f"top_k={top_k} is out of range: use 1..{any_lens.d_vocab}")
    records = {name: LensRecord() for name in lenses}
    hooks = [h for name, lens in lenses.items() for h in lens.hooks(records[name], positions=[position], model=model)]
    model.run_with_hooks(tokens, fwd_hooks=hooks)
    headers = ["layer", "hook"]
    for name in lenses:
        headers += [f"{name} top-{top_k}" if top_k > 1 else f"{name} top-1", f"{name} KL"]
    rows = []
    for layer in any_lens.layers:
        row: list[object] = [layer, any_lens.hook_names[layer]]
        for name in lenses:
            log_probs = records[name].log_probs[layer][0, 0]
            final = records[name].log_probs[any_lens.n_layers][0, 0]
            kl = float((final.exp() * (final - log_probs)).sum())
            values, ids = log_probs.topk(top_k)
            row.append(" | ".join(f"{token_str(model.tokenizer, i)} {v.exp():.2f}" for v, i in zip(values, ids)))
            row.append(max(kl, 0.0))
        rows.append(row)
    return format_table(headers, rows)


def metrics_table(metrics: Mapping) -> str:
    """Per-layer evaluation table (``tl_tunedlens.evaluate`` metrics): KL, CE, top-1 of each lens, nats."""
    lenses = lenses_in(metrics)
    headers = ["layer", "hook"]
    for name in lenses:
        headers += [f"{name} KL", f"{name} CE", f"{name} top1"]
    rows = []
    for entry in metrics["layers"]:
        row: list[object] = [entry["layer"], entry["hook"]]
        for name in lenses:
            row += [entry[name]["kl"], entry[name]["ce"], entry[name]["top1"]]
        rows.append(row)
    base = metrics["baseline"]
    footer = (f"model CE {base['ce']:.3f} nats/token ({base['bits_per_byte']['ce']:.3f} bits/byte), entropy "
              f"{base['entropy']:.3f} nats; {metrics['tokens']} tokens; KL and CE in nats per token")
    return format_table(headers, rows) + "\n" + footer


def transfer_table(transfer: Mapping) -> str:
    """The layer-transfer matrix (:func:`~tl_tunedlens.analysis.transfer.transfer_matrix`): rows = the
    residual's layer, columns = the translator's, KL(model || lens) in nats."""
    layers = list(transfer["layers"])
    rows = [[f"resid {i}", *row] for i, row in zip(layers, transfer["kl"])]
    return (format_table(["", *(f"T{j}" for j in layers)], rows)
            + f"\nlayer transfer: KL(model || translator Tj on the residual of layer i), nats; {transfer['tokens']} tokens")
