"""Validated settings: the field metadata of the settings dataclasses and the one check behind them.

:class:`~tl_tunedlens.training.config.TrainConfig` and :class:`~tl_tunedlens.data.config.DataConfig` declare
each field with :func:`option` (its help and rules); the command line generates its flags from them
(:mod:`tl_tunedlens.cli.options`) and every numeric option, flag or field, is checked by
:func:`option_problem`, so a default, a rule or a help text is written once.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Mapping

from ..errors import LensError


def option(help: str, **rules: Any) -> dict[str, Any]:
    """Field metadata: ``help`` for the CLI, and the rules :func:`option_problem` checks (beyond the
    field's type): ``choices``, ``min``/``max`` (with ``unit`` for the message), ``positive``, ``below``;
    ``flag`` (CLI name), ``label`` (for messages)."""
    return {"help": help, **rules}


def option_problem(value: Any, rules: Mapping[str, Any], kind: type | None = None) -> str | None:
    """Why ``value`` breaks ``rules`` (see the field metadata of :class:`~tl_tunedlens.training.config.TrainConfig`), or ``None`` when it is fine: the one check
    behind the settings dataclasses' fields (:class:`~tl_tunedlens.training.config.TrainConfig`, :class:`~tl_tunedlens.data.config.DataConfig`) and every numeric command-line option (:func:`~tl_tunedlens.cli.options.option_type`).

    ``kind`` (``int``, ``float``, ``str``): the type the value must have; an ``int`` is never a
    ``bool``, a ``float`` may be an ``int`` and must be finite."""
    if "choices" in rules:
        return None if value in rules["choices"] else f"use one of {', '.join(map(str, rules['choices']))}"
    numeric = kind in (int, float) or any(k in rules for k in ("min", "max", "positive", "below"))
    if kind is str and not isinstance(value, str):
        return "pass a string"
    if not numeric:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "pass a whole number" if kind is int else "pass a finite number"
    if kind is int and not isinstance(value, int):
        return "pass a whole number"
    if not math.isfinite(value):
        return "pass a finite number"
    unit = f" {rules['unit']}" if "unit" in rules else ""
    if "min" in rules and value < rules["min"]:
        return f"use at least {rules['min']}{unit}"
    if "max" in rules and value > rules["max"]:
        return f"use at most {rules['max']}{unit}"
    if rules.get("positive") and not value > 0:
        return "must be positive"
    if "below" in rules and not value < rules["below"]:
        return f"must be below {rules['below']}"
    return None


def check_option(name: str, value: Any, rules: Mapping[str, Any], kind: type | None = None) -> None:
    """Raise a one-line :class:`~tl_tunedlens.errors.LensError` (``name=value: why``) unless ``value``
    satisfies ``rules`` (see :func:`option_problem`)."""
    problem = option_problem(value, rules, kind)
    if problem is not None:
        label = rules.get("label", name.replace("_", " "))
        if "choices" in rules:
            raise LensError(f"unknown {label} {value!r}: {problem}")
        raise LensError(f"{name}={value!r}: {problem}")


def field_kind(hint: Any) -> tuple[type, bool, bool]:
    """``(element type, is a list, may be None)`` of a :class:`~tl_tunedlens.training.config.TrainConfig` field's type hint."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    optional = type(None) in args
    kind = next(a for a in args if a is not type(None))
    if typing.get_origin(kind) is list:
        return typing.get_args(kind)[0], True, optional
    return kind, False, optional
