"""Training checkpoints: one file, written atomically, loaded with ``weights_only=True``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import LensError, first_line
from .files import atomic_path

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` via temp file + rename."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict at ``path``, read with ``weights_only=True``; a one-line error when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise LensError(f"no checkpoint at {path} to resume from: train without --resume first")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise LensError(f"{path} is not a readable checkpoint ({first_line(err)}): delete it and retrain") from None
