"""The package's house plan holds: chapters import only downward, and modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tl_tunedlens"
# floors, bottom first: a module may import from its own floor or the ones below it
FLOORS = [{"errors"}, {"core"}, {"artifacts"}, {"lens"}, {"models", "data"}, {"training", "analysis"},
          {"viz"}, {"app"}, {"cli", "__main__", "__init__"}]
# chapters of one floor that never import each other: fitting and measuring share only the floors below
# (the vocabulary engine and torchrun support live in core)
APART = [{"training", "analysis"}]
MAX_LINES = 400


def _floor(chapter: str) -> int:
    return next(i for i, names in enumerate(FLOORS) if chapter in names)


def _chapter(module: Path) -> str:
    return module.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_chapters(module: Path) -> set[str]:
    """Chapters imported by ``module`` (relative imports; ``if TYPE_CHECKING:`` blocks left out)."""
    tree = ast.parse(module.read_text())
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                 and getattr(node.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(node)}
    depth = len(module.relative_to(PACKAGE).parts) - 1  # 0 for tl_tunedlens/x.py
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level and id(node) not in type_only:
            up = node.level - 1
            if up > depth:
                continue
            base = list(module.relative_to(PACKAGE).parts[:depth - up])
            target = base + (node.module.split(".") if node.module else [])
            if target:
                out.add(target[0])
            else:  # "from . import x" at the package root
                out.update(alias.name for alias in node.names)
    return out


def test_chapters_import_only_downward():
    upward = []
    for module in PACKAGE.rglob("*.py"):
        own = _chapter(module)
        for chapter in _imported_chapters(module):
            if (PACKAGE / chapter).is_dir() or (PACKAGE / f"{chapter}.py").is_file():
                if _floor(chapter) > _floor(own) or {own, chapter} in APART:
                    upward.append(f"{module.relative_to(PACKAGE)} imports {chapter}")
    assert not upward, upward


def test_modules_are_small_or_say_why():
    long = []
    for module in PACKAGE.rglob("*.py"):
        lines = module.read_text().splitlines()
        if len(lines) > MAX_LINES and "lines because" not in "\n".join(lines[:20]):
            long.append(f"{module.relative_to(PACKAGE)}: {len(lines)} lines")
    assert not long, long


def test_lens_py_lists_every_public_method_of_a_lens():
    """Reading ``lens.py`` tells a newcomer the whole public surface: no public method of a lens is
    inherited from another module of the package (the work itself lives below, in core and artifacts)."""

    import torch

    from tl_tunedlens.lens import LogitLens, TunedLens

    for cls in (TunedLens, LogitLens):
        for name in set(dir(cls)) - set(dir(torch.nn.Module)):
            if name.startswith("_"):
                continue
            owner = next(c for c in cls.__mro__ if name in vars(c))
            assert owner.__module__ == "tl_tunedlens.lens", f"{cls.__name__}.{name} comes from {owner.__module__}"
