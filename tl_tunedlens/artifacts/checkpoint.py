"""Training checkpoints: one file, written atomically, loaded with ``weights_only=True`` and checked.

A write that fails (a full disk, a quota, an I/O error) raises ``OSError`` with one line naming the
file, whatever torch's serialiser said, and leaves the previous checkpoint as it was. A read returns
a dict holding at least ``CHECKPOINT_KEYS``, or raises a one-line :class:`~tl_tunedlens.errors.LensError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import LensError, first_line
from .files import atomic_path, write_failure_as_oserror

CHECKPOINT_NAME = "checkpoint.pt"
#: what every checkpoint holds (and the type of each), checked on load before anything is resumed
CHECKPOINT_KEYS: dict[str, type | tuple[type, ...]] = {
    "step": int, "lens": dict, "optimizer": dict, "losses": list, "info": dict, "fingerprint": dict,
}


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` via temp file + rename.
    A failed write is an ``OSError`` naming ``path`` (the earlier checkpoint stays intact)."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp, write_failure_as_oserror(tmp, "the checkpoint"):
            torch.save(state, tmp)   # torch's zip writer reports a failed write as a RuntimeError
    except OSError as err:
        raise OSError(err.errno, f"writing the checkpoint failed ({err.strerror or first_line(err)}); the previous "
                                 "one is intact: free some space, then rerun with --resume", str(path)) from None
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict at ``path``, read with ``weights_only=True``; a one-line error when it is
    missing, unreadable, or not a checkpoint of ours (see ``CHECKPOINT_KEYS``)."""
    path = Path(path)
    if not path.is_file():
        raise LensError(f"no checkpoint at {path} to resume from: train without --resume first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise LensError(f"{path} is not a readable checkpoint ({first_line(err)}): delete it and retrain") from None
    if not isinstance(state, dict):
        raise LensError(f"{path} holds a {type(state).__name__}, not a tl-tunedlens training checkpoint: "
                        "delete it and train without --resume")
    for key, kind in CHECKPOINT_KEYS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            what = "lacks" if key not in state else f"has a {type(state[key]).__name__} for"
            raise LensError(f"{path} {what} {key!r}: it is not a complete tl-tunedlens training checkpoint; "
                            "delete it and train without --resume")
    return state


def check_resumable(state: dict, fingerprint: dict, path: Path) -> None:
    """A one-line error unless the checkpoint ``state`` was written for this run's data, hook points and
    settings (``fingerprint``: the trainer's)."""
    saved = state.get("fingerprint", {})
    for key in ("seq_len", "n_seq", "data_digest"):
        if saved.get(key) != fingerprint[key]:
            raise LensError(f"{path} was written for other data ({key}: {saved.get(key)} vs {fingerprint[key]}): "
                            "resume with the same --data and --seq-len, or drop --resume")
    if saved.get("hook_names", fingerprint["hook_names"]) != fingerprint["hook_names"]:
        raise LensError(f"{path} was written for a lens on other hook points: resume with the same --hooks, or drop --resume")
    saved_config = {"matmul_dtype": "float32", **saved.get("config", {})}  # checkpoints from before the option
    for key, value in fingerprint["config"].items():
        if saved_config.get(key) != value:
            raise LensError(f"{path} was written with {key}={saved_config.get(key)!r}, now {value!r}: "
                            "resume with the same options, or drop --resume")
