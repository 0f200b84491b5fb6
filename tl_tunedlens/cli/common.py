"""Flags and checks shared by the subcommands: the model, torchrun, outputs, a lens folder, layers.

The settings flags (training, data) are generated from their dataclasses in :mod:`tl_tunedlens.cli.options`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..core.backend import BACKENDS, Model
from ..models import DEFAULT_MODEL, DTYPES
from .options import option_type

if TYPE_CHECKING:
    from ..core.distributed import Dist

DEFAULT_TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"


# --- the model ----------------------------------------------------------------------------
def add_backend_args(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--raw-weights``: which kind of TransformerLens model to load (see load_model)."""
    parser.add_argument("--backend", default="auto", choices=["auto", *BACKENDS],
                        help="hooked: HookedTransformer (TransformerLens 3.x); bridge: TransformerBridge (3.9 and 4.x); "
                             "auto: hooked where TransformerLens has it (default: %(default)s)")
    parser.add_argument("--raw-weights", action="store_true",
                        help="bridge: keep the raw Hugging Face weights (no compatibility mode)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--dtype`` and ``--n-devices``."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="'smollm2-135m' (embedded, offline), an official TransformerLens model name, or with "
                             "--backend bridge a Hugging Face model folder or hub name (default: %(default)s)")
    add_backend_args(parser)
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                        help="dtype of the frozen model, e.g. bfloat16 on a GPU; lenses stay float32 (default: %(default)s)")
    parser.add_argument("--n-devices", type=option_type(int, min=1, unit="devices"), default=1,
                        help="split the frozen model's blocks over this many CUDA devices (default: %(default)s)")


def load_model_from_args(args: argparse.Namespace, name: str | None = None, *, sae_transformer: bool = False) -> Model:
    """The model of ``--model`` (or ``name``), ``--backend``, ``--raw-weights``, ``--device``, ``--dtype``,
    ``--n-devices`` (as sae-lens's model class with ``sae_transformer``)."""
    from ..models import load_model

    return load_model(name or args.model, backend=args.backend, compatibility_mode=not args.raw_weights,
                      dtype=DTYPES[getattr(args, "dtype", "float32")], device=getattr(args, "device", "cpu"),
                      n_devices=getattr(args, "n_devices", 1), sae_transformer=sae_transformer)


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
    """``--dist-timeout``: how long a rank of a ``torchrun`` run waits for the others."""
    from ..core.distributed import DEFAULT_TIMEOUT_S

    parser.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="under torchrun: seconds a rank waits for the others before the run stops with an "
                             "error (default: %(default)s)")


def start_distributed(args: argparse.Namespace) -> "Dist":
    """Join the ``torchrun`` process group when launched by it (else the one-process :class:`~tl_tunedlens.core.distributed.Dist`);
    under torchrun ``args.device`` becomes this rank's device."""
    from ..errors import LensError
    from ..core.distributed import init_distributed

    dist = init_distributed(args.device, args.dist_timeout)
    if dist.active:
        if args.n_devices > 1:
            raise LensError("--n-devices splits one model over devices; under torchrun every rank holds a whole "
                            "model: drop one of them")
        args.device = dist.device
    return dist


def add_overwrite_arg(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``: replace an earlier lens and results in ``--out`` (see :class:`~tl_tunedlens.artifacts.outdir.OutputFolder`)."""
    parser.add_argument("--overwrite", action="store_true",
                        help="--out may hold an earlier lens or results: remove them (only the files this command "
                             "writes) and write the new ones")


def add_truncate_arg(parser: argparse.ArgumentParser) -> None:
    """``--truncate``: keep the last tokens of a text that is too long, instead of an error."""
    parser.add_argument("--truncate", action="store_true",
                        help="a text longer than the limit keeps its last tokens (default: an error)")


def check_lens_arg(path: str | None) -> None:
    """The model-free checks of a ``--lens`` folder (:func:`~tl_tunedlens.artifacts.folder.check_folder`), before any model loads."""
    from ..artifacts.folder import check_folder

    if path is not None:
        check_folder(path)


def add_progress_arg(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``."""
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def check_layers_arg(model_name: str, hooks: "str | list[str] | None", layers: "list[int] | None") -> None:
    """``--layers`` against the model's layer count when it can be read without loading the model
    (:func:`~tl_tunedlens.models.peek_n_layers`); otherwise the trainer checks it after the load."""
    from ..core.layers import lens_hook_names, translator_layers
    from ..models import peek_n_layers

    n_layers = peek_n_layers(model_name) if layers is not None else None
    if n_layers is not None:
        translator_layers(layers, len(lens_hook_names(n_layers, hooks)) - 1)
