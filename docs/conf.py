"""Sphinx configuration of the tl_tunedlens documentation (``make docs``; offline, warnings are errors).

Tutorials are MyST Markdown pages whose code cells myst-nb executes at build time (a failing
cell fails the build). Nothing on a built page loads from the network: plotly.js and the
circuitsvis bundle are inlined by the package's own renderers, MathJax is served from
``_static`` (sphinx-mathjax-offline), the theme (furo) uses system fonts.
"""

from __future__ import annotations

import inspect
import os
import sys
import shutil
from pathlib import Path

from sphinx.util import logging

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")   # tutorials never reach the hub
os.environ.setdefault("TQDM_DISABLE", "1")

project = "tl_tunedlens"
author = "the tl_tunedlens developers"
copyright = "2026, the tl_tunedlens developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",
    "sphinx_copybutton",
    "myst_nb",
]
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "**/lens-out", "**/*-out"]
templates_path = ["_templates"]
html_theme = "furo"
html_title = "tl_tunedlens"
html_static_path = ["_static"]

# --- API reference ---------------------------------------------------------------------
# generated pages are rebuilt from the code each time: stale ones (a name that moved) would be orphans
shutil.rmtree(Path(__file__).parent / "_autosummary", ignore_errors=True)
autosummary_generate = True
autosummary_ignore_module_all = True   # each name is documented where it is defined
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True, "member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
add_module_names = False
napoleon_google_docstring = False
napoleon_numpy_docstring = False

# broken cross-references fail the build; names from other libraries are not documented here
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|transformer_lens|jaxtyping|numpy|np|plotly|go|circuitsvis|huggingface_hub|safetensors"
               r"|pathlib|os|typing|collections|types|dataclasses|argparse|concurrent|tqdm|werkzeug|transformers|sae_lens)(\..*)?"),
    (r"py:.*", r"(Tensor|Float|Int|Path|PathLike|Callable|Sequence|Mapping|Iterator|Iterable|Any|Decoder|nn\..*"
               r"|HookedTransformer|TransformerBridge|Model|SAE|HookList|Positions|Token|Tokens|VocabProducts|HookedSAETransformer|ActivationCache|HookPoint|RenderedHTML|Figure|TypedDict|Generator|Query|Limits)"),   # Query, Limits: app.query
    (r"py:.*", r".*\[.*"),   # jaxtyping shapes such as Float[Tensor, 'batch pos d_model']
    (r"py:class", r".*\.[TC]"),   # a module's TypeVar (e.g. Dist.shard's item type, a settings class)
    (r"py:class", r"(int|float|str|bool|dict|list|tuple|None|type|object|bytes|optional)"),
]

# --- executed tutorials ---------------------------------------------------------------------
nb_execution_mode = "force"   # every build runs every tutorial against the current code
nb_execution_raise_on_error = True
nb_execution_timeout = 900
nb_execution_show_tb = True
nb_ipywidgets_js = {}          # no widget JavaScript from a CDN
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
copybutton_prompt_text = r">>> |\$ "
copybutton_prompt_is_regexp = True

_logger = logging.getLogger("tl_tunedlens.docs")


def _warn_undocumented(app, what, name, obj, options, lines):
    """Every public module, class, function and method has a docstring, or the build fails (-W)."""
    if what in ("module", "class", "function", "method", "property") and not any(line.strip() for line in lines):
        if not name.rsplit(".", 1)[-1].startswith("_") and inspect.getmodule(obj) is not None:
            _logger.warning(f"undocumented public name {name}: add a docstring")


def setup(app):
    app.connect("autodoc-process-docstring", _warn_undocumented)
