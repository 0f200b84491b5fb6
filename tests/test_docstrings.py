"""Every public module, class, function, method and property has a docstring (the API pages are built
from them, and ``make docs`` fails on an undocumented name); this finds them in a second, without Sphinx."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import tl_tunedlens


def _modules():
    for info in pkgutil.walk_packages(tl_tunedlens.__path__, "tl_tunedlens."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):   # private modules, and __main__ (it runs the CLI)
            continue
        try:
            yield importlib.import_module(info.name)
        except ImportError:   # an optional extra that is not installed (its own tests skip)
            continue


def _undocumented(module) -> list[str]:
    missing = [] if (module.__doc__ or "").strip() else [module.__name__]
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj) or inspect.isclass(obj):
            if not (obj.__doc__ or "").strip():
                missing.append(f"{module.__name__}.{name}")
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                func = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                if attr.startswith("_") or not (inspect.isfunction(func)):
                    continue
                doc = member.__doc__ if isinstance(member, property) else inspect.getdoc(getattr(obj, attr))
                if not (doc or "").strip():
                    missing.append(f"{module.__name__}.{name}.{attr}")
    return missing


def test_every_public_name_has_a_docstring():
    missing = [name for module in _modules() for name in _undocumented(module)]
    assert not missing, "add a docstring to: " + ", ".join(missing)


def _examples() -> list[tuple[str, object]]:
    """Every docstring in the package that holds a ``>>>`` example: ``(name, doctest)``."""
    import doctest

    finder = doctest.DocTestFinder(exclude_empty=True)
    found = {}
    for module in (tl_tunedlens, *_modules()):
        for test in finder.find(module):
            if test.examples and test.name not in found:
                found[test.name] = test
    return sorted(found.items())


def test_docstring_examples_are_found():
    """The examples below are collected from the package itself (so a new one cannot be forgotten)."""
    names = [name for name, _ in _examples()]
    assert {"tl_tunedlens", "tl_tunedlens.lens", "tl_tunedlens.viz"} <= set(names), names


@pytest.mark.integration
def test_every_docstring_example_runs():
    """Each ``>>>`` example runs as written (each in its own namespace) and prints what it says."""
    import doctest

    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for name, test in _examples():
        test.globs = {}
        result = runner.run(test, out=lambda text: None)
        assert result.failed == 0, f"the example in {name}'s docstring fails: run python -m doctest on it"
