"""Fitting to a wall-clock budget (``TrainConfig.time_budget``): a measured warm-up, a plan, a deadline.

The budget covers the fit: this warm-up, the least-squares start and the KL steps; loading the model
and the data, and saving the lens, come on top (the plan line and the training info say so).
:func:`measure_rates` times, on random token ids, what a run repeats: one model forward with the
least-squares sums, and the KL work of one layer per token (its vocabulary products, softmax and
backward); it stops repeating a measurement once it has used ``WARMUP_SHARE`` of the budget, so a
loaded machine or a short budget cannot spend the budget on the warm-up. :func:`plan_budget` then spends the rest of the
budget (less ``RESERVE_SHARE``): first the laptop preset's least-squares sample (``FIRST_FIT_TOKENS``), then a
share ``FIT_SHARE`` of what is left on a larger sample (at most ``MAX_FIT_TOKENS`` tokens), the remainder
on whole KL steps (none when not even one fits: then the sample takes it all), each scored on the
validation slice (:mod:`.validation`, whose cost the step time includes). The plan replaces
``lstsq_tokens`` and ``steps`` (:meth:`BudgetPlan.apply`); the trainer stops collecting the sample at
its share, then re-plans the number of steps from the time actually left, after the start and after
every step (:func:`steps_that_fit`, with the mean measured step time once there is one), so that the
steps fill the budget whether the warm-up's estimate was high or low, and the learning-rate schedule
ends with the last step. The plan and what happened are recorded in the lens's training info.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..core.backend import capture_residuals, flatten_tokens
from ..errors import LensError
from .config import TrainConfig

from ..core.backend import Model

if TYPE_CHECKING:
    from ..lens import TunedLens
    from .trainer import Run

#: the least-squares sample every budget takes first (when it fits): the laptop preset's, where the start's
#: held-out KL levels off (docs/benchmarks.md)
FIRST_FIT_TOKENS = TrainConfig.__dataclass_fields__["lstsq_tokens"].default
#: share of the time left after that first sample that goes to a larger sample; the rest goes to KL steps,
#: which gained more per second beyond it (docs/benchmarks.md, bench/time_to_quality.py: from the 20k start,
#: 8 validated Adam steps, ~110 s, took held-out KL from 1.450 to 1.308 nats, where 8k more least-squares tokens
#: had bought nothing)
FIT_SHARE = 0.1
#: the least-squares sample never grows past this many tokens
MAX_FIT_TOKENS = 40960
#: kept free at the end of the budget, for solving the start and writing the last checkpoint
RESERVE_SHARE = 0.02
#: the warm-up's share of the budget: past it, no measurement is repeated
WARMUP_SHARE = 0.05
#: work of scoring one token on the validation slice, relative to one token of a KL step (forward only)
VALIDATION_COST = 0.5
#: what the budget covers, recorded with the plan
COVERS = "the fit (warm-up, least-squares start, KL steps); not loading the model or data, nor saving"


@dataclass
class Rates:
    """Seconds per token of each part of a run, measured on this machine."""

    forward: float          # model forward with hooks, per token
    stats: float            # least-squares sums over the trained layers, per token
    kl_layer: float         # one more layer's KL work per token (vocabulary products, softmax, backward)
    warmup_s: float         # wall time of the measurement itself
    kl_fixed: float | None = None   # KL work per token whatever the layers (the target distribution); None: half a layer

    def kl_token(self, n_layers: int) -> float:
        """Seconds of KL work per token over ``n_layers`` lens layers (fixed part included)."""
        return n_layers * self.kl_layer + (0.5 * self.kl_layer if self.kl_fixed is None else self.kl_fixed)

    def fit_seconds(self, tokens: int) -> float:
        """Seconds the least-squares start needs for ``tokens`` tokens."""
        return tokens * (self.forward + self.stats)

    def step_seconds(self, tokens: int, n_layers: int, validation_tokens: float = 0) -> float:
        """Seconds one KL step of ``tokens`` tokens over ``n_layers`` lens layers needs, with the scoring of
        ``validation_tokens`` on the validation slice."""
        per_token = self.kl_token(n_layers)
        return tokens * (self.forward + per_token) + validation_tokens * VALIDATION_COST * per_token

    def validation_seconds(self, tokens: int, n_layers: int) -> float:
        """Seconds to set up the validation slice: its forward and the start's score."""
        return tokens * (self.forward + VALIDATION_COST * self.kl_token(n_layers))


@dataclass
class BudgetPlan:
    """How a time budget is spent: the least-squares sample and the KL steps, planned from measured
    :class:`Rates`; recorded in the lens's training info."""
    budget_s: float
    lstsq_tokens: int
    steps: int
    tokens_per_step: int
    predicted_fit_s: float
    predicted_step_s: float
    rates: Rates

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` with the planned least-squares sample and step count (0 steps: the start alone)."""
        return dataclasses.replace(cfg, lstsq_tokens=max(1, self.lstsq_tokens), steps=self.steps,
                                   init="lstsq" if self.lstsq_tokens else cfg.init)

    def info(self) -> dict[str, Any]:
        """JSON-ready, recorded with the lens; :meth:`from_info` reads it back (resume)."""
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k != "rates"},
                "rates": dataclasses.asdict(self.rates), "covers": COVERS}

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> "BudgetPlan":
        """The plan recorded in a training-info dict (e.g. a checkpoint's), for a resume."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"rates"}   # "covers" is documentation
        return cls(**{k: info[k] for k in fields}, rates=Rates(**info["rates"]))


def measure_rates(model: Model, lens: "TunedLens", cfg: TrainConfig, seq_len: int,
                  layers: list[int], matmul_dtype: torch.dtype | None = None) -> Rates:
    """Time a forward + least-squares sums and one or two layers of KL work on random token ids (not trained
    on), each at the size a run uses (a micro-batch of sequences, a chunk of tokens), after an untimed call on
    a few tokens that pays the one-off costs (allocations, first-call dispatch), which would otherwise be
    counted as the steady rate. A measurement is repeated while the warm-up has used less than
    ``WARMUP_SHARE`` of ``cfg.time_budget``, and the fastest taken."""
    from ..core.vocab import vocab_products
    from .loss import accumulate_lens_grads
    from .lstsq import RidgeStats

    t_start = time.perf_counter()
    share = WARMUP_SHARE * float(cfg.time_budget or float("inf"))

    def time_left() -> bool:
        return time.perf_counter() - t_start < share / 2   # room for the measurement's second half

    micro = cfg.micro_batch or max(1, cfg.chunk_tokens // seq_len)
    tokens = torch.randint(0, model.cfg.d_vocab, (micro, seq_len), generator=torch.Generator().manual_seed(0))
    capture_residuals(model, tokens[:1, :min(seq_len, 16)], lens.hook_names)   # one-off costs, untimed
    forward = []
    while True:
        t0 = time.perf_counter()
        resids = flatten_tokens(capture_residuals(model, tokens, lens.hook_names))
        forward.append((time.perf_counter() - t0) / tokens.numel())
        if len(forward) == 2 or not time_left():
            break
    stats = RidgeStats(layers, lens.d_model)
    stats.update(resids[layers][:, :16], resids[-1][:16])                        # one-off costs, untimed
    t0 = time.perf_counter()
    stats.update(resids[layers], resids[-1])
    stats_rate = (time.perf_counter() - t0) / resids.shape[1]
    chunk = resids[:, :min(resids.shape[1], cfg.chunk_tokens)]
    probe = [layers[0], layers[-1]] if len(layers) > 1 else layers[:1]
    saved = {layer: [p.detach().clone() for p in lens.translators[layer].parameters()] for layer in probe}
    products = vocab_products(lens.unembed, matmul_dtype)
    one, two = [], []        # per token: the KL work of one layer, and of two layers in one call
    with torch.enable_grad():
        for layer in probe:
            lens.translators[layer].requires_grad_(True)
        accumulate_lens_grads(lens, chunk[:, :16], probe, chunk_tokens=cfg.chunk_tokens, products=products)
        while True:
            for out, these in ((one, probe[:1]), (two, probe)):
                t0 = time.perf_counter()
                accumulate_lens_grads(lens, chunk, these, chunk_tokens=cfg.chunk_tokens, products=products)
                out.append((time.perf_counter() - t0) / chunk.shape[1])
            if len(one) == 2 or not time_left():
                break
    kl_one, kl_two = min(one), min(two)
    kl_layer = max(kl_two - kl_one, 0.5 * kl_one)   # a layer's marginal cost (noise cannot make it vanish)
    for layer, params in saved.items():     # leave the lens (and its gradients) as they were
        for p, old in zip(lens.translators[layer].parameters(), params):
            p.grad = None
            p.data.copy_(old)
            p.requires_grad_(False)
    return Rates(forward=min(forward), stats=stats_rate, kl_layer=kl_layer, kl_fixed=max(kl_one - kl_layer, 0.0),
                 warmup_s=time.perf_counter() - t_start)


def plan_budget(cfg: TrainConfig, rates: Rates, seq_len: int, n_layers: int) -> BudgetPlan:
    """Split ``cfg.time_budget`` (less the warm-up and the reserve) between the least-squares sample and KL
    steps (see the module docstring): a longer budget never gets a smaller sample."""
    budget = float(cfg.time_budget)
    left = max(0.0, budget - rates.warmup_s - RESERVE_SHARE * budget)
    per_step = cfg.sequences_per_step(seq_len) * seq_len
    val_tokens = -(-cfg.validation_tokens // seq_len) * seq_len
    step_s = rates.step_seconds(per_step, n_layers, val_tokens / cfg.validate_every)
    per_token = rates.forward + rates.stats
    first = min(FIRST_FIT_TOKENS, left / per_token) if cfg.init == "lstsq" else 0.0
    more = min(MAX_FIT_TOKENS - first, FIT_SHARE * (left - first * per_token) / per_token) if first else 0.0
    fit_tokens = int(first + max(more, 0.0)) // seq_len * seq_len
    val_s = rates.validation_seconds(val_tokens, n_layers)
    steps = int((left - rates.fit_seconds(fit_tokens) - val_s) // step_s)
    if steps < 1 and cfg.init == "lstsq":   # not one step fits: the start takes the whole budget
        fit_tokens = int(min(MAX_FIT_TOKENS, left / (rates.forward + rates.stats))) // seq_len * seq_len
        steps = int((left - rates.fit_seconds(fit_tokens) - val_s) // step_s)
    if steps < 1 and cfg.init != "lstsq":
        raise LensError(f"a time budget of {budget:g} s leaves {left:.1f} s after the {rates.warmup_s:.1f} s warm-up, "
                        f"less than one KL step (~{step_s:.1f} s) from the identity start: raise --time-budget, lower "
                        "--tokens-per-step or use --init lstsq")
    return BudgetPlan(budget_s=budget, lstsq_tokens=max(fit_tokens, seq_len if cfg.init == "lstsq" else 0),
                      steps=max(steps, 0), tokens_per_step=per_step,
                      predicted_fit_s=rates.fit_seconds(fit_tokens), predicted_step_s=step_s, rates=rates)


def steps_that_fit(time_left: float, step_s: float, step: int, max_steps: int) -> int:
    """The number of steps of a budget run, re-planned at ``step``: those done, and as many more whole
    steps of ``step_s`` seconds as ``time_left`` holds, at most ``max_steps`` in all (the data's)."""
    return max(step, min(max_steps, step + int(max(0.0, time_left) // max(step_s, 1e-9))))


def step_estimate(run: "Run") -> float:
    """Seconds the next step should take: the plan's prediction until a step has run, then the slower of
    the mean and the last of this run's steps."""
    done = run.step_seconds
    return max(sum(done) / len(done), done[-1]) if done else run.plan.predicted_step_s


def final_score_s(run: "Run") -> float:
    """Seconds kept for scoring the last steps on the validation slice after the loop (its last scoring's time)."""
    return run.validation.seconds if run.validation is not None else 0.0


def out_of_time(run: "Run") -> bool:
    """Whether the next step (its time: :func:`step_estimate`) and the last scoring would end past the deadline."""
    if run.deadline is None:
        return False
    return time.perf_counter() + step_estimate(run) + final_score_s(run) > run.deadline


def replan(run: "Run") -> None:
    """A budget run with KL steps: the number of steps re-planned from the time left (:func:`steps_that_fit`;
    at most what the loaded data holds without reusing a sequence, or the first plan's number if more), so
    the steps fill the budget and the learning-rate schedule ends with the last of them."""
    if run.deadline is None or not run.plan.steps:
        return
    room = max(run.plan.steps, (len(run.sequences) - run.n_fit - run.n_val) // run.per_step)
    steps = steps_that_fit(run.deadline - time.perf_counter() - final_score_s(run), step_estimate(run), run.step, room)
    if steps != run.cfg.steps:
        run.cfg = dataclasses.replace(run.cfg, steps=steps)
        run.fingerprint["config"]["steps"] = steps
        run.info["steps_replanned"] = steps


def saved_plan(out_dir: str | Path) -> BudgetPlan | None:
    """The plan recorded in ``out_dir``'s checkpoint (``None`` without one, or without a budget)."""
    from ..artifacts.checkpoint import CHECKPOINT_NAME, load_checkpoint

    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    info = load_checkpoint(path).get("info", {})
    return BudgetPlan.from_info(info["budget"]) if "budget" in info else None
