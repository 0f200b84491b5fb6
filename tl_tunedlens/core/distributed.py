"""Data-parallel runs under ``torchrun``: the process group, each rank's share, and the sums it reduces.

A run is distributed when ``torchrun`` (or any launcher) sets ``WORLD_SIZE`` and ``RANK``, with
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. :func:`init_distributed` then joins the group:
``gloo`` on the CPU, ``nccl`` on CUDA (rank ``r`` uses ``cuda:LOCAL_RANK``). Without those variables it
returns ``SINGLE``, a one-process :class:`Dist` whose collectives do nothing, so the same code runs
either way.

What a rank does: every step's sequences are the single-process run's (:mod:`.order`); rank ``r``
takes the ``r``-th contiguous slice of them (:meth:`Dist.shard`), adds its gradient with the global
scale, and :meth:`Dist.all_reduce_` sums the lens gradients (one flat buffer, once per step), the
loss sums, the least-squares statistics and the evaluation sums. Every rank then holds the same
numbers and takes the same optimiser step, so the lens equals the one-process lens up to the order of
float sums. Rank 0 alone writes files and shows progress.

Faults: the group is made with a ``timeout``; a collective that fails (a peer died, raised and left,
or did not arrive within the timeout) raises :class:`DistributedError` naming the rank and the step,
never a hang. A rank that raises closes its connections at once (:meth:`Dist.abort`), so the others
fail at their next collective instead of waiting for the timeout.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterable, Sequence, TypeVar

import torch
from torch import Tensor

from ..errors import LensError, first_line

#: seconds a collective may wait for the other ranks before the run stops with an error
DEFAULT_TIMEOUT_S = 600.0
ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

T = TypeVar("T")


class DistributedError(LensError):
    """Another rank failed, left, or did not arrive in time: the run stops (the last checkpoint is intact)."""


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``rank`` of ``world``; ``backend`` is ``"gloo"`` or ``"nccl"`` once a
    process group is joined, ``""`` for a plain process (then every collective does nothing)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"
    backend: str = ""

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files, prints and shows progress bars."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether a process group is joined (collectives run, even with one rank)."""
        return bool(self.backend)

    def shard(self, items: Sequence[T]) -> Sequence[T]:
        """This rank's contiguous slice of ``items``: rank 0 first, sizes differing by at most one, the
        larger ones first (so rank 0's slice is empty only when ``items`` is)."""
        base, extra = divmod(len(items), self.world)
        start = self.rank * base + min(self.rank, extra)
        return items[start:start + base + (self.rank < extra)]

    def all_reduce_(self, tensors: Iterable[Tensor], what: str) -> None:
        """Sum each tensor over the ranks, in place, as one flat buffer per dtype and device; ``what``
        names the operation in the error if it fails."""
        tensors = [t for t in tensors if t is not None]
        if not self.active or not tensors:
            return
        import torch.distributed as tdist

        groups: dict[tuple, list[Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.dtype, t.device), []).append(t)
        for group in groups.values():
            flat = torch.cat([t.reshape(-1) for t in group]).to(self.device)
            self._call(tdist.all_reduce, flat, tdist.ReduceOp.SUM, what=what)
            flat = flat.to(group[0].device)
            offset = 0
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def broadcast_(self, tensor: Tensor, what: str) -> None:
        """Overwrite ``tensor`` with rank 0's, in place."""
        if not self.active:
            return
        import torch.distributed as tdist

        buf = tensor.to(self.device).contiguous()
        self._call(tdist.broadcast, buf, 0, what=what)
        tensor.copy_(buf.to(tensor.device))

    def barrier(self, what: str) -> None:
        """Wait until every rank is here."""
        if self.active:
            import torch.distributed as tdist

            self._call(tdist.barrier, what=what)

    def _call(self, fn, *args, what: str) -> None:
        try:
            fn(*args)
        except Exception as err:  # gloo / nccl errors are RuntimeError subclasses (DistBackendError...)
            raise DistributedError(
                f"rank {self.rank} of {self.world}: {what} failed ({first_line(err, 120)}): another rank died, "
                "raised or timed out; the last checkpoint is intact, rerun with --resume") from None

    def abort(self) -> None:
        """Leave the group at once (after an error on this rank), so the others fail fast."""
        if self.active:
            import torch.distributed as tdist

            if tdist.is_initialized():
                try:
                    tdist.destroy_process_group()
                except Exception:  # already broken: nothing left to close
                    pass

    def close(self) -> None:
        """Leave the group after a run that finished on every rank."""
        self.abort()


SINGLE = Dist()


def launched() -> bool:
    """Whether a launcher (``torchrun``) started this process: ``WORLD_SIZE`` and ``RANK`` are set."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def fail_fast_on_sigterm() -> None:
    """Under a launcher: make its SIGTERM (``torchrun`` stops the surviving ranks this way when one rank
    fails or is killed) a :class:`DistributedError`, so the rank leaves with our one-line message and the
    resume hint instead of dying silently behind the launcher's traceback. Call from the main thread."""
    import signal

    if not launched():
        return
    rank, world = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")

    def stopped(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)   # a second SIGTERM ends the process at once
        raise DistributedError(f"rank {rank} of {world} was stopped by the launcher (SIGTERM): another rank failed "
                               "or was killed; the last checkpoint is intact, rerun with --resume")

    signal.signal(signal.SIGTERM, stopped)


def init_distributed(device: str | torch.device = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> Dist:
    """Join the process group described by the launcher's environment (see the module docstring), or
    return ``SINGLE`` when there is none. ``device``: ``"cpu"`` (gloo) or ``"cuda"`` (nccl, this
    rank's ``cuda:LOCAL_RANK``). Returns the :class:`Dist` of this process; a one-line error when the
    environment is incomplete or the device is missing."""
    if not launched():
        return SINGLE
    import torch.distributed as tdist

    missing = [name for name in ENV_VARS if name not in os.environ]
    if missing:
        raise LensError(f"WORLD_SIZE is set but {missing[0]} is not: launch with torchrun --nproc_per_node N")
    if timeout_s <= 0:
        raise LensError(f"the distributed timeout must be positive, got {timeout_s}")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    kind = torch.device(device).type
    if kind == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise LensError(f"rank {rank} needs cuda:{local} but {torch.cuda.device_count()} CUDA devices are visible: "
                            "pass --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local)
        dev, backend = f"cuda:{local}", "nccl"
    elif kind == "cpu":
        dev, backend = "cpu", "gloo"
    else:
        raise LensError(f"distributed runs use --device cpu (gloo) or cuda (nccl), not {kind}")
    if not tdist.is_initialized():
        try:
            tdist.init_process_group(backend, rank=rank, world_size=world,
                                     timeout=datetime.timedelta(seconds=timeout_s))
        except Exception as err:
            raise DistributedError(f"rank {rank} could not join the {backend} group of {world} "
                                   f"({first_line(err, 120)}): check MASTER_ADDR/MASTER_PORT") from None
    return Dist(rank, world, dev, backend)
