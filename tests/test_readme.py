"""The README's code is real: each Python block named below equals an example file, which runs."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = {  # README section heading -> example file holding the section's first Python block
    "## Quickstart": "readme_quickstart.py",
    "## Training and evaluating a lens": "train_and_evaluate.py",
    "## TransformerLens 3 and 4: HookedTransformer or TransformerBridge": "readme_bridge.py",
}


def readme_block(heading: str) -> str:
    section = (ROOT / "README.md").read_text().split(heading + "\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("heading", list(BLOCKS))
def test_readme_block_is_the_example_file(heading):
    example = (ROOT / "examples" / BLOCKS[heading]).read_text().splitlines()
    code = [line for line in example if not line.startswith("#")]
    assert readme_block(heading).strip() == "\n".join(code).strip()


def test_quickstart_is_ten_lines_or_so():
    assert len(readme_block("## Quickstart").strip().splitlines()) <= 12


@pytest.mark.integration
def test_readme_quickstart_runs(capsys):
    runpy.run_path(str(ROOT / "examples" / "readme_quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["10", "20", "30"]
    assert "question" in out[-1]


@pytest.mark.integration
def test_readme_training_example_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / "examples" / "train_and_evaluate.py"), run_name="__main__")
    tuned_kl = eval(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(tuned_kl) == 31 and tuned_kl[-1] == 0.0
    assert max(tuned_kl[1:30]) < 6.0  # the logit lens is at 13-20 nats in the middle layers
    assert (tmp_path / "my-lens" / "lens.safetensors").is_file()


@pytest.mark.integration
@pytest.mark.bridge
def test_readme_bridge_example_runs(capsys):
    runpy.run_path(str(ROOT / "examples" / "readme_bridge.py"), run_name="__main__")
    assert capsys.readouterr().out.strip() == "torch.Size([31, 1, 7, 49152])"


def test_every_python_block_of_the_readme_is_tested():
    """A Python block the README shows is one of the example files above (which run), or there is none."""
    readme = (ROOT / "README.md").read_text()
    sections = re.split(r"\n(?=## )", readme)
    shown = [s.splitlines()[0] for s in sections if "```python" in s]
    assert sorted(shown) == sorted(BLOCKS), shown
