"""Training a tuned lens against the frozen model's own output distribution.

:func:`train_lens` reads top to bottom as four named steps:

1. :func:`prepare` checks the inputs and sets up a :class:`Run` (layers, optimiser, schedule,
   the vocabulary products of :mod:`tl_tunedlens.core.vocab`, the data plan of :mod:`.order`);
2. :func:`start` resumes from ``out_dir/checkpoint.pt`` or applies the least-squares start (:mod:`.lstsq`);
3. :func:`train_step` runs one optimiser step: the model runs frozen, its residual streams are
   captured with hooks on ``lens.hook_names``, and :func:`~.loss.accumulate_lens_grads` adds the
   loss gradient micro-batch by micro-batch; then clipping, the whitening of ``optimizer="whitened"``
   (:mod:`.precondition`), the update, a weight check, and the validation slice's verdict
   (:mod:`.validation`: a layer whose step raised its validation KL is put back, with a smaller step);
4. :func:`finish` freezes the lens again and returns a :class:`TrainResult`.

Checkpoints are written atomically every ``config.checkpoint_every`` steps and at the end;
``resume=True`` reproduces an uninterrupted run bit for bit on CPU. A non-finite loss or weight, or
a layer's loss staying well above its first step's (:class:`~tl_tunedlens.training.loss.DivergenceWatch`), stops training
with an error naming the layer and step (the last checkpoint stays intact).
With ``config.time_budget`` the run is planned from a measured warm-up (:mod:`.budget`), its number of
steps is re-planned from the time left after the start and after every step, and it stops before a step
that would end past the budget.

Under ``torchrun`` (``dist=``, :mod:`tl_tunedlens.core.distributed`) each rank runs its slice of every step's sequences
and of the least-squares sample; gradients, loss sums and the least-squares statistics are summed over
the ranks, so every rank holds the same lens; rank 0 alone writes checkpoints and shows progress, and a
checkpoint resumes with any number of ranks.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from jaxtyping import Int
from torch import Tensor

from ..artifacts.checkpoint import CHECKPOINT_NAME, check_resumable, load_checkpoint, save_checkpoint
from ..core.backend import Model, capture_residuals, flatten_tokens
from ..core.layers import translator_layers
from ..errors import LensError
from .budget import BudgetPlan, measure_rates, out_of_time, plan_budget, replan
from ..core.distributed import SINGLE, Dist
from ..core.vocab import MATMUL_DTYPES, VocabProducts, resolve_matmul_dtype, vocab_products
from .config import TrainConfig
from .loss import DivergenceWatch, accumulate_lens_grads, diverged
from .lstsq import RidgeStats, collect_stats, fit_from_stats_
from .optim import layer_groups, make_optimizer, set_lrs
from .order import data_digest, step_sequences, stream_positions
from .precondition import Whitener
from .validation import Validation, judge_block

if TYPE_CHECKING:
    from ..lens import TunedLens


@dataclass
class TrainResult:
    """What a training run did: steps, tokens, the loss of every step (nats, summed over layers), the last step's per-layer losses, wall time and the metadata saved with the lens."""
    steps: int
    tokens_seen: int
    losses: list[float]               # total loss (nats, summed over layers) per step
    layer_losses: list[float]         # per-layer mean loss (nats) of the last step
    seconds: float
    info: dict
    step_seconds: list[float] = field(default_factory=list)  # wall time of each step (resumed: with the earlier ones)


@dataclass
class Run:
    """One training run's state between its steps."""

    model: Model
    lens: "TunedLens"
    sequences: Int[Tensor, "n_seq seq_len"]
    cfg: TrainConfig
    layers: list[int]                 # translators being trained
    params: list[torch.nn.Parameter]
    optimizer: Any                    # a torch optimiser, or optim.Optimizers (Muon + AdamW)
    products: VocabProducts           # the vocabulary products (and their buffers), core.vocab
    per_step: int                     # sequences per step
    micro: int                        # sequences per model forward
    n_fit: int                        # sequences of the least-squares sample (read first)
    n_val: int                        # sequences of the validation slice (read next; 0 without KL steps)
    step_tokens: int                  # scored positions per step
    fingerprint: dict[str, Any]       # what a resume must match
    ckpt_path: Path | None
    dist: Dist = SINGLE               # this process's rank (a torchrun run) or the one process
    resume_state: dict | None = None  # the checkpoint to continue from, until start() applies it
    plan: BudgetPlan | None = None    # with a time budget: the plan, and the deadline (perf_counter)
    deadline: float | None = None
    whitener: Whitener | None = None  # optimizer="whitened": the least-squares sample's input moments
    validation: Validation | None = None  # the validation slice, with KL steps
    block_start: list[list[Tensor]] | None = None   # trained layers' parameters before the steps not yet judged
    step: int = 0
    losses: list[float] = field(default_factory=list)
    layer_losses: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    elapsed: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
    watch: DivergenceWatch = field(default_factory=DivergenceWatch)


def train_lens(model: Model, lens: "TunedLens", sequences: Int[Tensor, "n_seq seq_len"],
               config: TrainConfig | None = None, *, out_dir: str | Path | None = None, resume: bool = False,
               progress: bool = True, data_info: dict | None = None, plan: BudgetPlan | None = None,
               on_step: Callable[[Run], None] | None = None, stats: RidgeStats | None = None,
               dist: Dist = SINGLE) -> TrainResult:
    """Train ``lens`` (a ``TunedLens`` for ``model``) on ``sequences``; returns a :class:`TrainResult`.

    With ``out_dir``, a checkpoint ``out_dir/checkpoint.pt`` is written every
    ``config.checkpoint_every`` steps and at the end; ``resume=True`` continues from it. The final
    lens is *not* saved here (call ``lens.save(out_dir, training=result.info)``). ``data_info``
    (e.g. :meth:`~tl_tunedlens.data.tokens.TokenData.info`) is recorded in ``result.info``. With ``config.time_budget``,
    ``plan`` is the :func:`~tl_tunedlens.training.trainer.plan_run` made before loading the data (made here when not given).
    ``on_step(run)`` is called after the start and after every step (e.g. to evaluate snapshots);
    its time counts neither in ``result.seconds`` nor against the budget. ``stats``: the least-squares
    sums of this run's sample (:func:`~tl_tunedlens.training.lstsq.collect_stats` over its first
    ``lstsq_sequences``, in stream order), already collected: the start only solves them (e.g. to
    compare refinements from one start; the pass's time is then not in ``result.seconds``).
    ``dist``: this rank of a ``torchrun`` run (:func:`~tl_tunedlens.core.distributed.init_distributed`);
    every rank passes the same arguments and gets the same lens."""
    from ..core.progress import progress_bar as tqdm

    t_begin = time.perf_counter()
    progress = progress and dist.is_main
    try:
        run = prepare(model, lens, sequences, config or TrainConfig(), out_dir, resume=resume, plan=plan,
                      t_begin=t_begin, dist=dist)
        start(run, progress=progress, stats=stats)
        replan(run)
        _call(on_step, run)
        bar = tqdm(total=run.cfg.steps, initial=run.step, desc="train", disable=not progress or not run.cfg.steps,
                   dynamic_ncols=True)
        if run.validation is not None:
            bar.set_postfix(val=f"{run.validation.mean:.4g}")
        while run.step < run.cfg.steps and not out_of_time(run):
            train_step(run)
            replan(run)
            bar.total = run.cfg.steps
            if run.ckpt_path is not None and run.cfg.checkpoint_every and (
                    run.step % run.cfg.checkpoint_every == 0 or run.step == run.cfg.steps):
                judge_block(run)   # a checkpoint holds no unjudged steps
                save_run(run)
            _call(on_step, run)
            bar.update(1)
            bar.set_postfix(loss=f"{run.losses[-1]:.4g}", tok_s=f"{run.step_tokens / run.step_seconds[-1]:.0f}",
                            **({"val": f"{run.validation.mean:.4g}"} if run.validation is not None else {}))
        bar.close()
        judge_block(run)   # the steps since the last judgement
        if run.ckpt_path is not None and (run.step < run.cfg.steps or run.deadline is not None):
            save_run(run)   # stopped by the budget (or its re-planned steps done): keep where it got
        dist.barrier("the end of training")   # rank 0's last checkpoint is written before any rank returns
    except BaseException:
        dist.abort()   # the other ranks fail at their next collective instead of waiting for the timeout
        raise
    return finish(run, data_info)


def _call(on_step: Callable[[Run], None] | None, run: Run) -> None:
    """Run the caller's callback off the clock: its time is added back to the deadline."""
    if on_step is not None:
        t0 = time.perf_counter()
        on_step(run)
        if run.deadline is not None:
            run.deadline += time.perf_counter() - t0


def plan_run(model: Model, lens: "TunedLens", config: TrainConfig, seq_len: int) -> BudgetPlan:
    """The plan of a ``config.time_budget`` run (a measured warm-up on random tokens; see :mod:`.budget`):
    ``plan.apply(config).token_budget(seq_len)`` tokens is the data to load for it."""
    if config.time_budget is None:
        raise LensError("plan_run needs a TrainConfig with time_budget set")
    layers = _trained_layers(lens, config)
    dtype, _ = resolve_matmul_dtype(lens.unembed, config.matmul_dtype, config.chunk_tokens)
    rates = measure_rates(model, lens, config, seq_len, layers, dtype)
    return plan_budget(config, rates, seq_len, len(layers))


def _trained_layers(lens: "TunedLens", cfg: TrainConfig) -> list[int]:
    return translator_layers(cfg.layers, lens.n_layers)


def prepare(model: Model, lens: "TunedLens", sequences: Tensor, cfg: TrainConfig,
            out_dir: str | Path | None, *, resume: bool = False, plan: BudgetPlan | None = None,
            t_begin: float | None = None, dist: Dist = SINGLE) -> Run:
    """Check the inputs against ``cfg`` and the model; set up the optimiser, schedule, vocabulary products and data
    plan. With ``cfg.time_budget``: the budget's plan (given, made now, or the checkpoint's on
    ``resume``) and its deadline. On ``resume`` the checkpoint is read here and applied by :func:`start`."""
    if sequences.ndim != 2 or len(sequences) == 0:
        raise LensError("training needs token sequences of shape [n_seq, seq_len]: pass at least one sequence")
    seq_len = int(sequences.shape[1])
    cfg.check(seq_len)
    n_ctx = model.cfg.n_ctx
    if seq_len > n_ctx:
        raise LensError(f"sequence length {seq_len} exceeds the model's context n_ctx={n_ctx}: pass --seq-len <= {n_ctx}")
    lens.check_model(model)
    layers = _trained_layers(lens, cfg)
    if dist.world > 1 and cfg.time_budget is not None:
        raise LensError("--time-budget plans one process's run: drop it under torchrun and set --steps instead")
    t_begin = time.perf_counter() if t_begin is None else t_begin
    ckpt_path = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    state = None
    if resume:
        if ckpt_path is None:
            raise LensError("resuming needs the output folder holding checkpoint.pt")
        state = load_checkpoint(ckpt_path)
    saved_info = state.get("info", {}) if state else {}
    deadline = None
    if cfg.time_budget is not None:
        if "budget" in saved_info:     # the plan the run started with, and the budget it had left
            plan = BudgetPlan.from_info(saved_info["budget"])
            left = state.get("budget_left_s", cfg.time_budget - float(state.get("seconds", 0.0)))
            deadline = t_begin + float(left)
        elif plan is None:
            plan = plan_run(model, lens, cfg, seq_len)
            deadline = t_begin + cfg.time_budget
        else:  # planned before the data was loaded: its warm-up counts, the loading does not
            deadline = t_begin + cfg.time_budget - plan.rates.warmup_s
        cfg = plan.apply(cfg)
        if state is not None:   # the number of steps as last re-planned
            cfg = dataclasses.replace(cfg, steps=int(state["fingerprint"]["config"]["steps"]))
    if "matmul_dtype" in saved_info:
        matmul_dtype, dtype_choice = MATMUL_DTYPES[saved_info["matmul_dtype"]], saved_info.get("matmul_dtype_choice")
    elif dist.active and cfg.matmul_dtype == "auto":   # rank 0 measures; every rank takes its choice
        matmul_dtype, dtype_choice = (resolve_matmul_dtype(lens.unembed, "auto", cfg.chunk_tokens) if dist.is_main
                                      else (lens.unembed.dtype, "auto: rank 0's measurement"))
        bf16 = torch.tensor([float(matmul_dtype == torch.bfloat16)])
        dist.broadcast_(bf16, "the matmul dtype broadcast")
        matmul_dtype = torch.bfloat16 if bf16.item() else (matmul_dtype if dist.is_main else lens.unembed.dtype)
    else:
        matmul_dtype, dtype_choice = resolve_matmul_dtype(lens.unembed, cfg.matmul_dtype, cfg.chunk_tokens)
    params = [p for i in layers for p in lens.translators[i].parameters()]
    lens.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = make_optimizer(layer_groups(lens, layers), cfg)
    per_step = cfg.sequences_per_step(seq_len)
    step_tokens = per_step * (seq_len - 1 if cfg.loss == "ce" else seq_len)
    return Run(
        model=model, lens=lens, sequences=sequences, cfg=cfg, layers=layers, params=params, optimizer=optimizer,
        products=vocab_products(lens.unembed, matmul_dtype),
        per_step=per_step, micro=cfg.micro_batch or max(1, cfg.chunk_tokens // seq_len),
        n_fit=min(len(sequences), cfg.lstsq_sequences(seq_len)), n_val=cfg.validation_sequences(seq_len),
        step_tokens=step_tokens,
        fingerprint={"config": dataclasses.asdict(cfg), "seq_len": seq_len, "n_seq": len(sequences),
                     "data_digest": data_digest(sequences), "hook_names": lens.hook_names},
        ckpt_path=ckpt_path, dist=dist, resume_state=state,
        info={"init": cfg.init, "matmul_dtype": _dtype_name(matmul_dtype), "matmul_dtype_choice": dtype_choice,
              **({"budget": plan.info()} if plan is not None else {})},
        plan=plan, deadline=deadline,
    )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def start(run: Run, *, progress: bool, stats: RidgeStats | None = None) -> None:
    """Continue from the checkpoint read by :func:`prepare`, or set the least-squares start (``init="lstsq"``,
    from ``stats`` when given)."""
    state = run.resume_state
    if state is not None:
        check_resumable(state, run.fingerprint, run.ckpt_path)
        run.lens.load_state_dict(state["lens"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.step, run.losses, run.info = state["step"], list(state["losses"]), dict(state["info"])
        run.elapsed = float(state.get("seconds", 0.0))
        run.step_seconds = list(state.get("step_seconds", []))
        run.watch.load_state_dict(state.get("divergence"))
        if "whitener" in state:
            run.whitener = Whitener.from_state_dict(state["whitener"])
        run.resume_state = None
    elif run.n_fit:
        t0 = time.perf_counter()
        fit = run.sequences[run.dist.shard(stream_positions(len(run.sequences), 0, run.n_fit, run.cfg.seed))]
        fit_deadline = None
        if run.deadline is not None:   # the sample's share of the budget, ending where the planned steps begin
            fit_deadline = run.deadline - run.plan.steps * run.plan.predicted_step_s
        if stats is None:
            stats = collect_stats(run.model, run.lens, fit, layers=run.layers, micro_batch=run.micro,
                                  progress=progress, centre=run.lens.bias, deadline=fit_deadline, dist=run.dist)
        run.info.update(fit_from_stats_(run.lens, stats, run.cfg.ridge))
        if run.cfg.optimizer == "whitened":
            run.whitener = Whitener.from_stats(stats, run.lens.bias, run.cfg.damping)
        run.info["lstsq_seconds"] = round(time.perf_counter() - t0, 2)
        run.elapsed += time.perf_counter() - t0
    if run.n_val and (run.step < run.cfg.steps or (state or {}).get("validation")):
        t0 = time.perf_counter()
        val = run.sequences[stream_positions(len(run.sequences), run.n_fit, run.n_val, run.cfg.seed)]
        run.validation = Validation(run.model, run.lens, val, micro_batch=run.micro, chunk_tokens=run.cfg.chunk_tokens,
                                    products=run.products, ce=run.cfg.loss == "ce", dist=run.dist)
        if state is not None and state.get("validation"):
            run.validation.load_state_dict(state["validation"])
        else:   # the start's own score: the bar every step must clear
            run.validation.judge(run.validation.layer_kl(run.lens, run.layers))
            run.info["validation_start_kl"] = round(run.validation.mean, 6)
        run.elapsed += time.perf_counter() - t0


def train_step(run: Run) -> None:
    """One optimiser step over ``per_step`` sequences (this rank's slice of them), in micro-batches; then the
    gradients and loss sums are summed over the ranks; records the loss and time."""
    t0 = time.perf_counter()
    cfg, lens = run.cfg, run.lens
    run.optimizer.zero_grad(set_to_none=False)
    idx = run.dist.shard(step_sequences(len(run.sequences), run.per_step, run.step, cfg.seed,
                                        offset=run.n_fit + run.n_val))
    sums = torch.zeros(len(run.layers), dtype=torch.float64)
    for m in range(0, len(idx), run.micro):
        batch = run.sequences[idx[m:m + run.micro]]
        resids = capture_residuals(run.model, batch, lens.hook_names)
        labels = None
        if cfg.loss == "ce":
            resids, labels = resids[:, :, :-1], batch[:, 1:].flatten()
        sums += accumulate_lens_grads(lens, flatten_tokens(resids), run.layers, labels=labels,
                                      scale=1.0 / run.step_tokens, chunk_tokens=cfg.chunk_tokens, step=run.step,
                                      products=run.products)
        del resids
    if run.dist.active:
        for p in run.params:
            if p.grad is None:   # a rank with no sequence this step still takes part
                p.grad = torch.zeros_like(p)
        run.dist.all_reduce_([p.grad for p in run.params] + [sums], f"the gradient all-reduce of step {run.step}")
    if cfg.clip:
        torch.nn.utils.clip_grad_norm_(run.params, cfg.clip)
    if run.whitener is not None:
        run.whitener.apply_(lens)
    if run.validation is not None and run.block_start is None:   # the lens the coming steps are judged against
        run.block_start = [[p.detach().clone() for p in lens.translators[i].parameters()] for i in run.layers]
    set_lrs(run.optimizer, cfg, run.step)
    run.optimizer.step()
    for layer in run.layers:
        if not all(torch.isfinite(p).all() for p in lens.translators[layer].parameters()):
            raise diverged("the translator", layer, run.step)
    if (run.step + 1) % cfg.validate_every == 0:
        judge_block(run)
    run.layer_losses = (sums / run.step_tokens).tolist()
    run.watch.update(run.layer_losses, run.layers, run.step)
    run.losses.append(float(sum(run.layer_losses)))
    dt = time.perf_counter() - t0
    run.elapsed += dt
    run.step_seconds.append(dt)
    run.step += 1


def save_run(run: Run) -> None:
    """Write the checkpoint (atomically; rank 0 only): everything :func:`start` needs to resume."""
    if not run.dist.is_main:
        return
    save_checkpoint(run.ckpt_path, {
        "step": run.step, "lens": run.lens.state_dict(), "optimizer": run.optimizer.state_dict(),
        "losses": run.losses, "info": run.info,
        **({"validation": run.validation.state_dict()} if run.validation is not None else {}),
        "fingerprint": run.fingerprint, "seconds": run.elapsed, "step_seconds": run.step_seconds,
        "divergence": run.watch.state_dict(),
        **({"whitener": run.whitener.state_dict()} if run.whitener is not None else {}),
        # on the deadline's own clock: a resume gets exactly what the stopped run had left (not budget - seconds,
        # which leaves out the time between steps)
        **({"budget_left_s": run.deadline - time.perf_counter()} if run.deadline is not None else {}),
    })


def finish(run: Run, data_info: dict | None = None) -> TrainResult:
    """Freeze the lens, drop training-only caches, and summarise the run."""
    for p in run.params:
        p.requires_grad_(False)
        p.grad = None
    cfg = run.cfg
    seq_len = run.fingerprint["seq_len"]
    run.info.update({
        "loss": cfg.loss, "optimizer": cfg.optimizer, "steps": run.step, "tokens_per_step": run.step_tokens,
        "seq_len": seq_len, "tokens_seen": run.step * run.step_tokens,
        "final_loss": run.losses[-1] if run.losses else None, "layers_trained": run.layers, "seed": cfg.seed,
        "lr": cfg.lr, "seconds": round(run.elapsed, 2), **(data_info or {}),
    })
    run.info.pop("ranks", None)   # a resumed run records its own number of ranks
    if run.dist.active:
        run.info["ranks"] = run.dist.world
    if run.validation is not None:
        run.info["validation"] = {"tokens": run.validation.tokens, "start_kl": run.info.pop("validation_start_kl", None),
                                  "best_kl": round(run.validation.mean, 6),
                                  "rejected_steps": run.validation.rejected}
    if run.plan is not None:
        fit_short = run.info.get("lstsq_tokens", 0) < run.n_fit * seq_len   # the sample cut by the deadline
        run.info["stopped_early"] = run.step < cfg.steps or fit_short
        run.info["budget_used"] = {"seconds": round(run.plan.budget_s - (run.deadline - time.perf_counter()), 2),
                                   "fit_seconds": round(run.elapsed, 2), "steps_run": run.step,
                                   "steps_planned": cfg.steps, "steps_first_planned": run.plan.steps,
                                   "lstsq_tokens": run.info.get("lstsq_tokens", 0),
                                   "lstsq_tokens_planned": run.plan.lstsq_tokens}
    return TrainResult(run.step, run.step * run.step_tokens, run.losses, run.layer_losses, run.elapsed,
                       run.info, run.step_seconds)
