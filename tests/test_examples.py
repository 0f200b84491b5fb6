"""The examples run: the notebook is executed end to end (so it never rots), the script's helpers work."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.integration
def test_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("TL_TUNEDLENS_OUT", str(tmp_path))
    monkeypatch.delenv("TL_TUNEDLENS_LENS", raising=False)
    nb = nbformat.read(EXAMPLES / "lens_tour.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(EXAMPLES)}})
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    html = "\n".join(o.get("data", {}).get("text/html", "") for o in outputs if "data" in o)
    assert "CircuitsVis.render(" in html and "plotly" in html.lower()
    # displays are offline: no script loaded from a URL, no circuitsvis CDN
    assert not re.search(r"<script[^>]*\bsrc=[\"']?(https?:)?//", html) and "unpkg.com" not in html
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "tuned lens" in text
    assert {"kl_logit_vs_tuned.html", "tuned_view.html"} <= {p.name for p in tmp_path.iterdir()}


def test_quickstart_fit_beats_logit_lens(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    sys.modules.pop("quickstart", None)
    import quickstart
    import torch

    from conftest import make_tiny_model
    from tl_tunedlens import LogitLens, TunedLens
    from tl_tunedlens.analysis.trajectory import trajectory_pair

    model = make_tiny_model("RMS", n_layers=3)
    gen = torch.Generator().manual_seed(0)
    train, held_out = torch.randint(0, 37, (16, 32), generator=gen), torch.randint(0, 37, (4, 32), generator=gen)
    tuned = quickstart.quick_fit(TunedLens.from_model(model), model, train, ridge=1e-3)
    logit_traj, tuned_traj, _ = trajectory_pair(LogitLens.from_model(model), tuned, model, held_out)
    # on held-out tokens the closed-form lens is closer to the output than the logit lens
    assert (tuned_traj.mean("kl")[:-1] < logit_traj.mean("kl")[:-1]).all()
