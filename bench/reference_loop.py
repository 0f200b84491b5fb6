"""The reference ``tuned-lens==0.2.0`` training loop, reproduced for side-by-side comparisons.

Its semantics, as in ``tuned_lens/scripts/train_loop.py`` of 0.2.0 (which cannot run here: it needs
its training dependencies and a dataset ingredient): per micro-batch, one frozen forward of the Hugging
Face model with ``output_hidden_states``; the target is ``logits.float().log_softmax(-1)`` at every
position (token shift 0); for each translator ``i`` (``hidden_states[i]``, the last hidden state
excluded) the lens runs under ``torch.autocast(device, bfloat16)``, the loss is
``sum(p * (log p - log q), -1).mean()`` and ``(loss / grad_acc_steps).backward()`` runs at once,
layer by layer; after the step's micro-batches: ``clip_grad_norm_(lens.parameters(), 1.0)``, the
optimiser step, ``zero_grad(set_to_none=False)`` and the scheduler step. Optimiser: SGD with
Nesterov momentum 0.9, torch lr = ``lr_scale * (1 - momentum)``, weight decay 1e-3; schedule:
``transformers.get_linear_schedule_with_warmup(opt, 0, num_steps)``.

Only the reference's lens classes (``tuned_lens.nn``, installed with ``--no-deps``) are imported.
``autocast=False`` runs the lens in fp32 instead (on a CPU without bf16 instructions the autocast
is several times slower, so speed comparisons give the reference fp32).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class ReferenceRun:
    lens: object                      # tuned_lens.nn.TunedLens
    losses: list[float] = field(default_factory=list)        # per step: sum over translators of the mean loss
    step_seconds: list[float] = field(default_factory=list)


def reference_train(hf_model, batches: list[Tensor], *, num_steps: int | None = None, micro_batch: int = 1,
                    lr_scale: float = 1.0, momentum: float = 0.9, weight_decay: float = 1e-3,
                    autocast: bool = True, deadline: float | None = None) -> ReferenceRun:
    """Train a fresh reference ``TunedLens`` for ``hf_model`` one step per entry of ``batches``
    (``[sequences_per_step, seq_len]`` token ids each), ``num_steps`` setting the schedule's length
    (default ``len(batches)``). Stops early, between steps, once ``time.perf_counter() >= deadline``."""
    from transformers import get_linear_schedule_with_warmup
    from tuned_lens.nn import TunedLens as RefTunedLens

    hf_model.requires_grad_(False)
    lens = RefTunedLens.from_model(hf_model, bias=True)
    opt = torch.optim.SGD(lens.parameters(), lr=lr_scale * (1 - momentum), momentum=momentum, nesterov=True,
                          weight_decay=weight_decay)
    scheduler = get_linear_schedule_with_warmup(opt, 0, num_steps or len(batches))
    device = next(hf_model.parameters()).device
    run = ReferenceRun(lens)
    for batch in batches:
        if deadline is not None and time.perf_counter() >= deadline:
            break
        t0 = time.perf_counter()
        micro = batch.split(micro_batch)
        layer_losses: dict[int, list[float]] = {}
        for ids in micro:
            with torch.no_grad():
                output = hf_model(input_ids=ids.to(device), output_hidden_states=True)
            labels = output.logits.float().log_softmax(dim=-1)
            for i, h in enumerate(output.hidden_states[:-1]):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    logits = lens(h, idx=i)
                    loss = torch.sum(labels.exp() * (labels - logits.log_softmax(-1)), dim=-1).mean()
                    layer_losses.setdefault(i, []).append(loss.item())
                    scaled = loss / len(micro)
                scaled.backward()
        torch.nn.utils.clip_grad_norm_(lens.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=False)
        scheduler.step()
        run.losses.append(sum(sum(v) / len(v) for v in layer_losses.values()))
        run.step_seconds.append(time.perf_counter() - t0)
    return run
