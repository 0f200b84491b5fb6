"""The README's quickstart is real code: it equals examples/readme_quickstart.py, which runs."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_quickstart() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_quickstart_is_the_example_file():
    example = (ROOT / "examples" / "readme_quickstart.py").read_text().splitlines()
    code = [line for line in example if not line.startswith("#")]
    assert readme_quickstart().strip().splitlines() == code
    assert len(code) <= 12


@pytest.mark.integration
def test_readme_quickstart_runs(capsys):
    runpy.run_path(str(ROOT / "examples" / "readme_quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["10", "20", "30"]
    assert "question" in out[-1]
