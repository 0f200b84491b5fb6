"""Training a tuned lens against the frozen model's own output distribution.

Loss per layer ``l``: forward KL from the model's final distribution ``p`` to the lens's ``q_l``,
``sum_v p (log p - log q_l)`` in nats, averaged over tokens and summed over layers (or, with
``loss="ce"``, cross-entropy against the next token). The model runs without gradients; its
residual streams are captured with hooks on ``lens.hook_names``.

Memory and speed: tokens are processed in chunks of ``chunk_tokens`` and layer by layer, so at
most one ``[chunk, d_vocab]`` block of logits (plus the target) is alive at a time. The gradient
w.r.t. the logits is written down analytically (``softmax(z) - p``) and pushed back through the
model's own ``ln_final``/unembedding with ``z.backward(grad)``: no autograd graph over the
vocabulary-sized softmax is ever built.

``train_lens`` handles the optimiser (see :mod:`.optim`), micro-batches (gradient accumulation),
checkpoints every N steps (atomic; ``resume=True`` reproduces an uninterrupted run bit for bit on
CPU), the least-squares start (:mod:`.lstsq`) and stops on non-finite values naming the layer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .errors import LensError
from .optim import OPTIMIZERS, make_optimizer, make_scheduler
from .residuals import capture_residuals

LOSSES = ("kl", "ce")
INITS = ("identity", "lstsq")
MATMUL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class TrainingDivergedError(LensError):
    """A loss or a translator became NaN/inf; the last good checkpoint is left as it was."""


@dataclass
class TrainConfig:
    """Trainer settings. Defaults follow the paper except the step size, which suits a CPU."""

    steps: int = 250
    tokens_per_step: int = 2**18
    optimizer: str = "sgd"
    lr: float | None = None           # 1.0 for SGD (times 1 - momentum), 1e-3 for Adam
    momentum: float = 0.9
    weight_decay: float = 1e-3
    clip: float | None = 1.0          # max global grad norm over the lens parameters
    warmup_steps: int = 0
    loss: str = "kl"
    seed: int = 0
    micro_batch: int | None = None    # sequences per model forward (default: ~chunk_tokens tokens)
    chunk_tokens: int = 512           # tokens per [chunk, d_vocab] logits block
    checkpoint_every: int = 10        # steps between checkpoints (0: never)
    init: str = "identity"
    lstsq_tokens: int = 8192
    ridge: float = 1e-4
    layers: list[int] | None = None   # translators to train (default: all)
    matmul_dtype: str = "float32"     # vocabulary matmuls of the lens: "float32" or "bfloat16"

    def check(self, seq_len: int) -> None:
        if self.steps < 1:
            raise LensError(f"steps={self.steps}: train for at least 1 step")
        if self.tokens_per_step < seq_len:
            raise LensError(f"tokens per step {self.tokens_per_step} is below one sequence of {seq_len}: "
                            "raise --tokens-per-step or lower --seq-len")
        if self.optimizer not in OPTIMIZERS:
            raise LensError(f"unknown optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        if self.loss not in LOSSES:
            raise LensError(f"unknown loss {self.loss!r}: use one of {', '.join(LOSSES)}")
        if self.init not in INITS:
            raise LensError(f"unknown init {self.init!r}: use one of {', '.join(INITS)}")
        if self.matmul_dtype not in MATMUL_DTYPES:
            raise LensError(f"unknown matmul dtype {self.matmul_dtype!r}: use one of {', '.join(MATMUL_DTYPES)}")
        if self.chunk_tokens < 1 or (self.micro_batch is not None and self.micro_batch < 1):
            raise LensError("chunk_tokens and micro_batch must be positive")
        if not 0 <= self.warmup_steps < self.steps:
            raise LensError(f"warmup of {self.warmup_steps} steps must be >= 0 and below the {self.steps} steps")


@dataclass
class TrainResult:
    steps: int
    tokens_seen: int
    losses: list[float]               # total loss (nats, summed over layers) per step
    layer_losses: list[float]         # per-layer mean loss (nats) of the last step
    seconds: float
    info: dict
    step_seconds: list[float] = dataclasses.field(default_factory=list)  # wall time of each step run here


# --- the loss and its gradient on one chunk of tokens --------------------------------------
def _log_softmax_(z: Tensor) -> Tensor:
    """``log_softmax(z, -1)`` written over ``z`` on CPU (the kernel finishes each row's max and sum
    before writing it; saves a ``[chunk, d_vocab]`` buffer); out of place elsewhere."""
    if z.device.type == "cpu":
        return torch._log_softmax(z, -1, False, out=z)
    return z.log_softmax(-1)


def accumulate_lens_grads(lens, resids: Float[Tensor, "layer n d_model"], layers: list[int], *,
                          labels: Int[Tensor, " n"] | None = None, scale: float = 1.0,
                          chunk_tokens: int = 512, step: int | None = None,
                          matmul_dtype: torch.dtype | None = None) -> Float[Tensor, " layer"]:
    """Add ``scale * d(loss)/d(params)`` to the translators' ``.grad``; return per-layer loss sums.

    ``resids[i]``: residual at lens layer ``i`` for ``n`` tokens (all ``n_layers + 1`` layers).
    ``labels``: next-token ids for cross-entropy; ``None`` for KL to the final layer's output.
    ``matmul_dtype``: dtype of the lens's vocabulary matmuls (forward logits and the backward
    product with the gradient w.r.t. the logits), e.g. ``torch.bfloat16``; ``None``: the model's.
    The target distribution, the softmax, the loss and its gradient stay fp32 either way.
    Returns ``[len(layers)]`` loss *sums* over the ``n`` tokens (nats).

    Buffers per chunk: the scaled target ``-scale * p`` (fp32), the lens logits (``matmul_dtype``,
    reused for the gradient) and one fp32 copy of them (log-probs, then probabilities, in place)."""
    fused = _fused_weights(lens, matmul_dtype)
    if fused is not None:
        return _accumulate_fused(lens, resids, layers, fused, labels=labels, scale=scale,
                                 chunk_tokens=chunk_tokens, step=step)
    n = resids.shape[1]
    s = scale if scale != 0 else 1.0
    sums = torch.zeros(len(layers), dtype=torch.float64, device=resids.device)
    for start in range(0, n, chunk_tokens):
        sl = slice(start, start + chunk_tokens)
        neg_target = neg_entropy = None
        if labels is None:
            with torch.no_grad():  # the target stays in the model's precision (1 matmul in 61)
                logp = _log_softmax_(lens.unembed(resids[-1, sl]).float())
                neg_target = logp.exp()                                 # p
                neg_entropy = torch.linalg.vecdot(neg_target, logp)
                del logp
                neg_target.mul_(-s)                                     # -s * p
        for j, layer in enumerate(layers):
            logits = lens.unembed(lens.transform(resids[layer, sl], layer), matmul_dtype)
            with torch.no_grad():
                out = logits.detach()
                z = out.float()                                         # fp32: the logits themselves
                lq = _log_softmax_(z)                                   # on CPU in place (not needed again)
                if labels is None:
                    # KL = sum p log p - sum p log q; vecdot(-s p, lq) = -s sum p log q
                    loss = neg_entropy + torch.linalg.vecdot(neg_target, lq) / s
                else:
                    lab = labels[sl].to(z.device)
                    loss = -lq.gather(-1, lab[:, None]).squeeze(-1)
                total = loss.double().sum()
                if not torch.isfinite(total):
                    where = f" at step {step}" if step is not None else ""
                    raise TrainingDivergedError(
                        f"the loss became non-finite at layer {layer}{where}: lower --lr or use --optimizer adam; "
                        "the last checkpoint is intact"
                    )
                sums[j] += total
                q = lq.exp_()                                           # q, in place
                if labels is None:
                    torch.add(neg_target, q, alpha=s, out=out)          # s * (q - p), in matmul dtype
                    if scale == 0:
                        out.zero_()
                else:
                    q.mul_(scale).scatter_add_(-1, lab[:, None], torch.full_like(loss[:, None], -scale))
                    out.copy_(q)
                del z, lq, q
            logits.backward(out)
            del logits, out
    return sums.cpu()


def _fused_weights(lens, matmul_dtype: torch.dtype | None):
    """``(exact, lens)`` weight pairs for :func:`_accumulate_fused`, each ``(F [d_model d_vocab],
    B [d_vocab d_model], b_U)`` with ``logits = x F + b_U`` and ``grad_x = g B``; ``None`` when the
    unembedding is not TransformerLens's plain frozen ``Unembed`` (then autograd does it all).
    The model-precision pair is a view of the model's own ``W_U``: no copy of it is made."""
    unembed = lens.unembed
    if unembed.softcapped or unembed.vocab_weights(matmul_dtype or unembed.dtype, cache=False) is None:
        return None
    w_u, b_u = unembed.unembed.W_U.detach(), unembed.unembed.b_U.detach()
    exact = (w_u, w_u.T, b_u)
    if matmul_dtype is None or matmul_dtype == w_u.dtype:
        return exact, exact
    w_t, b_low = unembed.vocab_weights(matmul_dtype)
    return exact, (w_t.T, w_t, b_low)


def _abort(total: Tensor, layer: int, step: int | None) -> None:
    if not torch.isfinite(total):
        where = f" at step {step}" if step is not None else ""
        raise TrainingDivergedError(
            f"the loss became non-finite at layer {layer}{where}: lower --lr or use --optimizer adam; "
            "the last checkpoint is intact"
        )


def _accumulate_fused(lens, resids: Tensor, layers: list[int], weights, *, labels: Tensor | None,
                      scale: float, chunk_tokens: int, step: int | None) -> Tensor:
    """:func:`accumulate_lens_grads` without autograd over the vocabulary.

    Autograd runs only up to the ``[chunk, d_model]`` output of ``ln_final``; the two vocabulary
    products (logits ``x W_U + b_U`` and the gradient ``g W_U^T``) are explicit ``addmm``/``mm``
    calls into ``[chunk, d_vocab]`` buffers allocated once per call and reused for every layer and
    chunk (fresh 100 MB blocks per layer cost as much in page faults as the arithmetic)."""
    (f_exact, _, b_exact), (f_low, b_mat, b_low) = weights
    low = f_low.dtype if f_low.dtype != torch.float32 else None
    n, device = resids.shape[1], resids.device
    c = min(chunk_tokens, n)
    vocab = f_exact.shape[1]
    s = scale if scale != 0 else 1.0
    sums = torch.zeros(len(layers), dtype=torch.float64, device=device)
    z_buf = torch.empty(c, vocab, dtype=torch.float32, device=device)
    p_buf = torch.empty(c, vocab, dtype=torch.float32, device=device) if labels is None else None
    low_buf = torch.empty(c, vocab, dtype=low, device=device) if low is not None else None

    def logits_into(x: Tensor, m: int, exact: bool) -> Tensor:
        z = z_buf[:m]
        if exact or low is None:
            f, b = (f_exact, b_exact) if exact else (f_low, b_low)
            if f.dtype == torch.float32:
                return torch.addmm(b, x.float(), f, out=z)
            return z.copy_(torch.addmm(b, x.to(f.dtype), f))
        torch.addmm(b_low, x.to(low), f_low, out=low_buf[:m])
        return z.copy_(low_buf[:m])

    for start in range(0, n, chunk_tokens):
        sl = slice(start, start + chunk_tokens)
        m = resids[0, sl].shape[0]
        neg_target = neg_entropy = lab = None
        with torch.no_grad():
            if labels is None:  # the target in the model's own precision
                logp = _log_softmax_(logits_into(lens.unembed.normalize(resids[-1, sl]), m, exact=True))
                neg_target = torch.exp(logp, out=p_buf[:m])                  # p
                neg_entropy = torch.linalg.vecdot(neg_target, logp)
                neg_target.mul_(-s)                                          # -s * p
            else:
                lab = labels[sl].to(device)[:, None]
        for j, layer in enumerate(layers):
            x = lens.unembed.normalize(lens.transform(resids[layer, sl], layer))   # autograd from here down
            with torch.no_grad():
                lq = _log_softmax_(logits_into(x.detach(), m, exact=False))
                if labels is None:
                    loss = neg_entropy + torch.linalg.vecdot(neg_target, lq) / s  # KL(p || q) per token
                else:
                    loss = -lq.gather(-1, lab).squeeze(-1)
                total = loss.double().sum()
                _abort(total, layer, step)
                sums[j] += total
                g = lq.exp_()                                                # q, in place
                if scale == 0:
                    g.zero_()
                elif labels is None:
                    torch.add(neg_target, g, alpha=s, out=g)                 # s * (q - p)
                else:
                    g.mul_(scale).scatter_add_(-1, lab, torch.full_like(loss[:, None], -scale))
                if low is not None:
                    g = low_buf[:m].copy_(g)
                grad_x = torch.mm(g.to(b_mat.dtype), b_mat)                 # [m, d_model]
            x.backward(grad_x.to(x.dtype))
    return sums.cpu()


# --- data order ------------------------------------------------------------------------------
def step_sequences(n_seq: int, per_step: int, step: int, seed: int) -> list[int]:
    """Indices of the sequences used at ``step``: consecutive slices of seeded per-epoch permutations."""
    out = []
    for k in range(step * per_step, (step + 1) * per_step):
        epoch, i = divmod(k, n_seq)
        perm = torch.randperm(n_seq, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(perm[i]))
    return out


def _data_digest(sequences: Tensor) -> str:
    return hashlib.sha256(sequences.to("cpu", torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]


# --- the trainer -------------------------------------------------------------------------------
def train_lens(model, lens, sequences: Int[Tensor, "n_seq seq_len"], config: TrainConfig | None = None, *,
               out_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
               data_info: dict | None = None) -> TrainResult:
    """Train ``lens`` (a ``TunedLens`` for ``model``) on ``sequences``; returns a :class:`TrainResult`.

    With ``out_dir``, a checkpoint ``out_dir/checkpoint.pt`` is written every
    ``config.checkpoint_every`` steps and at the end; ``resume=True`` continues from it. The final
    lens is *not* saved here (call ``lens.save(out_dir, training=result.info)``)."""
    from tqdm.auto import tqdm

    cfg = config or TrainConfig()
    if sequences.ndim != 2 or len(sequences) == 0:
        raise LensError("training needs token sequences of shape [n_seq, seq_len]: pass at least one sequence")
    seq_len = int(sequences.shape[1])
    cfg.check(seq_len)
    if seq_len > model.cfg.n_ctx:
        raise LensError(f"sequence length {seq_len} exceeds the model's context n_ctx={model.cfg.n_ctx}: "
                        f"pass --seq-len <= {model.cfg.n_ctx}")
    lens.check_model(model)
    layers = sorted({lens.layer_index(i) for i in (cfg.layers or range(lens.n_layers))} - {lens.n_layers})
    if not layers:
        raise LensError("no layer to train: pass layers below n_layers")
    params = [p for i in layers for p in lens.translators[i].parameters()]
    for p in lens.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)

    matmul_dtype = MATMUL_DTYPES[cfg.matmul_dtype]
    if matmul_dtype == lens.unembed.dtype:
        matmul_dtype = None
    per_step = max(1, cfg.tokens_per_step // seq_len)
    micro = cfg.micro_batch or max(1, cfg.chunk_tokens // seq_len)
    tokens_per_position = seq_len - 1 if cfg.loss == "ce" else seq_len
    step_tokens = per_step * tokens_per_position
    fingerprint = {"config": dataclasses.asdict(cfg), "seq_len": seq_len, "n_seq": len(sequences),
                   "data_digest": _data_digest(sequences)}

    optimizer = make_optimizer(params, cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.steps, cfg.warmup_steps)
    ckpt_path = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    losses: list[float] = []
    info: dict = {"init": cfg.init}
    start_step, elapsed = 0, 0.0
    if resume:
        if ckpt_path is None:
            raise LensError("resuming needs the output folder holding checkpoint.pt")
        state = load_checkpoint(ckpt_path)
        _check_resumable(state, fingerprint, ckpt_path)
        lens.load_state_dict(state["lens"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step, losses, info = state["step"], list(state["losses"]), dict(state["info"])
        elapsed = float(state.get("seconds", 0.0))
    elif cfg.init == "lstsq":
        from .lstsq import lstsq_init_

        n_fit = max(1, min(len(sequences), -(-cfg.lstsq_tokens // seq_len)))
        fit_idx = step_sequences(len(sequences), n_fit, 0, cfg.seed)
        t0 = time.perf_counter()
        info = lstsq_init_(lens, model, sequences[fit_idx], ridge=cfg.ridge, layers=layers,
                           micro_batch=micro, progress=progress)
        info["lstsq_seconds"] = round(time.perf_counter() - t0, 2)
        elapsed += time.perf_counter() - t0

    def checkpoint(step: int) -> None:
        if ckpt_path is None:
            return
        save_checkpoint(ckpt_path, {
            "step": step, "lens": lens.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "losses": losses, "info": info,
            "fingerprint": fingerprint, "seconds": elapsed,
        })

    last_layer_losses: list[float] = []
    step_seconds: list[float] = []
    bar = tqdm(total=cfg.steps, initial=start_step, desc="train", disable=not progress, dynamic_ncols=True)
    for step in range(start_step, cfg.steps):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=False)
        idx = step_sequences(len(sequences), per_step, step, cfg.seed)
        sums = torch.zeros(len(layers), dtype=torch.float64)
        for m in range(0, per_step, micro):
            batch = sequences[idx[m:m + micro]]
            resids = capture_residuals(model, batch, lens.hook_names)
            labels = None
            if cfg.loss == "ce":
                resids, labels = resids[:, :, :-1], batch[:, 1:].flatten()
            sums += accumulate_lens_grads(lens, resids.flatten(1, 2), layers, labels=labels,
                                          scale=1.0 / step_tokens, chunk_tokens=cfg.chunk_tokens, step=step,
                                          matmul_dtype=matmul_dtype)
            del resids
        if cfg.clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        optimizer.step()
        scheduler.step()
        _check_weights(lens, layers, step)
        layer_means = (sums / step_tokens).tolist()
        losses.append(float(sum(layer_means)))
        last_layer_losses = layer_means
        dt = time.perf_counter() - t0
        elapsed += dt
        step_seconds.append(dt)
        done = step + 1
        if ckpt_path is not None and cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            checkpoint(done)
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4g}", tok_s=f"{step_tokens / dt:.0f}")
    bar.close()
    lens.unembed._w_u_t_low = None  # the low-precision W_U copy is only for training
    for p in params:
        p.requires_grad_(False)
        p.grad = None

    info.update({
        "loss": cfg.loss, "optimizer": cfg.optimizer, "steps": cfg.steps, "tokens_per_step": step_tokens,
        "seq_len": seq_len, "tokens_seen": cfg.steps * step_tokens, "final_loss": losses[-1] if losses else None,
        "layers_trained": layers, "seed": cfg.seed, "lr": cfg.lr, "seconds": round(elapsed, 2),
        "matmul_dtype": cfg.matmul_dtype,
        **(data_info or {}),
    })
    return TrainResult(cfg.steps, cfg.steps * step_tokens, losses, last_layer_losses, elapsed, info, step_seconds)


def _check_weights(lens, layers: list[int], step: int) -> None:
    for layer in layers:
        if not all(torch.isfinite(p).all() for p in lens.translators[layer].parameters()):
            raise TrainingDivergedError(
                f"the translator of layer {layer} became non-finite at step {step}: lower --lr or use "
                "--optimizer adam; the last checkpoint is intact"
            )


def _check_resumable(state: dict, fingerprint: dict, path: Path) -> None:
    saved = state.get("fingerprint", {})
    for key in ("seq_len", "n_seq", "data_digest"):
        if saved.get(key) != fingerprint[key]:
            raise LensError(f"{path} was written for other data ({key}: {saved.get(key)} vs {fingerprint[key]}): "
                            "resume with the same --data and --seq-len, or drop --resume")
    saved_config = {"matmul_dtype": "float32", **saved.get("config", {})}  # checkpoints from before the option
    for key, value in fingerprint["config"].items():
        if saved_config.get(key) != value:
            raise LensError(f"{path} was written with {key}={saved_config.get(key)!r}, now {value!r}: "
                            "resume with the same options, or drop --resume")
