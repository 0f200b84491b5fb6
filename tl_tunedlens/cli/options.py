"""Command-line flags generated from the settings dataclasses, so the CLI and the library never disagree.

:func:`add_config_args` adds one flag per field of :class:`~tl_tunedlens.training.config.TrainConfig` or
:class:`~tl_tunedlens.data.config.DataConfig` (name, type, choices, help and default from the field) and
:func:`config_from_args` builds the dataclass back from the parsed flags; numeric flags are checked by the
fields' own rules (:func:`option_type`, :func:`~tl_tunedlens.core.options.option_problem`) before anything loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Callable, TypeVar

from ..core.options import field_kind, option_problem
from ..data.config import DataConfig
from ..training.config import PRESETS, TrainConfig

C = TypeVar("C")


def option_type(kind: type, **rules: Any):
    """An argparse ``type`` that parses ``kind`` (``int``/``float``) and checks ``rules`` (``min``, ``max``,
    ``positive``, ``below``, ``unit``; see :func:`~tl_tunedlens.core.options.option_problem`), so a bad
    value is a one-line usage error before anything loads."""
    if kind not in (int, float):
        return kind

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a {'whole' if kind is int else 'finite'} number") from None
        problem = option_problem(value, rules, kind)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"{text}: {problem}")
        return value

    parse.__name__ = kind.__name__
    return parse


def add_config_args(group: Any, cls: type, *, defaults: dict[str, Any] | None = None,
                    default_note: Callable[[dataclasses.Field], str] | None = None) -> None:
    """One flag per field of dataclass ``cls`` into ``group`` (a parser or argument group): ``--field-name``
    (or the field's ``flag``), its type, choices and help, its default (``defaults`` override the field's;
    ``default_note(field)`` may add to the help's default). Flags not given stay ``None`` (see :func:`config_from_args`)."""
    defaults = defaults or {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, is_list, _ = field_kind(hints[f.name])
        default = defaults.get(f.name, f.default)
        help_text = f.metadata["help"]
        if "(default:" not in help_text:
            note = default_note(f) if default_note is not None else ""
            help_text += f" (default: {'all' if default is None else default}{note})"
        rules = {k: v for k, v in f.metadata.items() if k != "choices"}  # argparse checks choices itself
        group.add_argument(f.metadata.get("flag", "--" + f.name.replace("_", "-")), dest=f.name,
                           type=option_type(kind, **rules), nargs="+" if is_list else None,
                           choices=f.metadata.get("choices"), default=None, help=help_text)
    group.set_defaults(**{f"_{cls.__name__}_defaults": defaults})


def config_from_args(args: argparse.Namespace, cls: type[C], **base: Any) -> C:
    """``cls`` from ``base`` (and the defaults :func:`add_config_args` was given) with every flag the user gave applied."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    return cls(**{**getattr(args, f"_{cls.__name__}_defaults", {}), **base, **given})


# --- the two settings dataclasses -------------------------------------------------------------------
def add_data_args(parser: argparse.ArgumentParser, default_split: str) -> None:
    """The :class:`~tl_tunedlens.data.config.DataConfig` flags (the text, its split, the sequence length)."""
    add_config_args(parser.add_argument_group("data"), DataConfig, defaults={"split": default_split})


def data_config_from_args(args: argparse.Namespace) -> DataConfig:
    """The data settings of the flags, with the sequence length made definite (a token store's own, or the default)."""
    return config_from_args(args, DataConfig).resolved()


def add_train_config_args(parser: argparse.ArgumentParser) -> None:
    """``--preset`` plus one flag per :class:`~tl_tunedlens.training.config.TrainConfig` field (default: the preset's value)."""
    group = parser.add_argument_group("training (defaults: the laptop preset)")
    group.add_argument("--preset", default="laptop", choices=sorted(PRESETS),
                       help="laptop: the least-squares start, minutes on a CPU; paper: Belrose et al. 2023 (identity "
                            "start, 250 SGD steps x 2^18 tokens); flags below override it (default: %(default)s)")

    def paper_note(f: dataclasses.Field) -> str:
        paper = PRESETS["paper"].get(f.name, f.default)
        return f"; paper: {paper}" if paper != f.default else ""

    add_config_args(group, TrainConfig, default_note=paper_note)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset with every flag the user gave applied (validated by TrainConfig)."""
    return config_from_args(args, TrainConfig, **TrainConfig.preset(args.preset).__dict__)
