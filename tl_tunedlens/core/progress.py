"""Progress bars: tqdm's, as a notebook widget where Jupyter can draw one and as text elsewhere."""

from __future__ import annotations

from typing import Any


def progress_bar(*args: Any, **kwargs: Any):
    """``tqdm(*args, **kwargs)``: the notebook widget when ``ipywidgets`` is installed (``tqdm.auto``), else the
    text bar, so a notebook without ipywidgets gets no ``IProgress not found`` warning."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        from tqdm import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm(*args, **kwargs)
