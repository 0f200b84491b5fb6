"""Layer indexing: which TransformerLens hook point each lens layer reads.

Lens layer ``i`` in ``0..n_layers`` is the residual stream after ``i`` blocks:
``i = 0`` is ``blocks.0.hook_resid_pre`` (the embeddings) and ``i >= 1`` is
``blocks.{i-1}.hook_resid_post``. Layer ``n_layers`` is decoded with no translator,
so the lens there equals the model's own output. This matches the reference
``tuned-lens`` package's ``hidden_states[i]`` indexing one to one.

Wherever a layer number is accepted, so is the hook name of its site (:func:`layer_of_hook`):
``"blocks.10.hook_resid_post"`` is lens layer 11, ``"blocks.3.hook_resid_pre"`` lens layer 3;
a TransformerBridge's canonical names (``blocks.{i}.hook_in``/``hook_out``) and the hook points of
an sae-lens SAE at the site (``"blocks.10.hook_resid_post.hook_sae_output"``) name the same layer.
"""

from __future__ import annotations

import re

from ..errors import LensError

# a lens site, as a HookedTransformer or a Bridge names it, optionally inside an sae-lens SAE attached there
_SITE = re.compile(r"blocks\.(\d+)\.(hook_resid_pre|hook_resid_post|hook_in|hook_out)(\.hook_sae_\w+)?")
_BRIDGE_NAMES = {"hook_resid_pre": "hook_in", "hook_resid_post": "hook_out"}


def resid_hook_name(layer: int) -> str:
    """Hook name of the residual stream read by (non-negative) lens layer ``layer``."""
    if layer == 0:
        return "blocks.0.hook_resid_pre"
    return f"blocks.{layer - 1}.hook_resid_post"


def resid_hook_names(n_layers: int) -> list[str]:
    """Hook names of every lens layer ``0..n_layers`` (``n_layers + 1`` names)."""
    return [resid_hook_name(i) for i in range(n_layers + 1)]


def bridge_hook_name(hook_name: str) -> str:
    """The TransformerBridge's canonical name of a lens site (``blocks.{i}.hook_resid_pre/post`` are aliases of
    ``blocks.{i}.hook_in/out``); other names are returned as they are."""
    match = _SITE.fullmatch(hook_name)
    if match is None or match.group(2) not in _BRIDGE_NAMES:
        return hook_name
    return f"blocks.{match.group(1)}.{_BRIDGE_NAMES[match.group(2)]}{match.group(3) or ''}"


def layer_of_hook(hook_name: str, n_layers: int) -> int:
    """The lens layer that reads ``hook_name``: ``blocks.{i}.hook_resid_pre`` is layer ``i``,
    ``blocks.{i}.hook_resid_post`` layer ``i + 1`` (Bridge names and sae-lens SAE hook points at the site alike)."""
    match = _SITE.fullmatch(hook_name.strip())
    if match is None:
        raise LensError(f"{hook_name!r} is not a lens site: lens layers read blocks.{{i}}.hook_resid_pre "
                        "and blocks.{i}.hook_resid_post (or pass a layer number)")
    block, after = int(match.group(1)), match.group(2) in ("hook_resid_post", "hook_out")
    if block >= n_layers:
        raise LensError(f"{hook_name!r} names block {block} but the model has blocks 0..{n_layers - 1}")
    return block + after


def normalize_layer(layer: int | str, n_layers: int) -> int:
    """Map a lens layer (negative counts from the end, like Python) or the hook name it reads
    (:func:`layer_of_hook`) to ``0..n_layers``."""
    if isinstance(layer, str):
        return layer_of_hook(layer, n_layers)
    if isinstance(layer, bool) or not isinstance(layer, int):
        try:
            layer = int(layer)  # accepts 0-d tensors and numpy ints
        except (TypeError, ValueError):
            raise LensError(f"layer must be an int or a hook name, got {type(layer).__name__}") from None
    n = n_layers + 1
    if not -n <= layer < n:
        raise LensError(
            f"layer {layer} is out of range: this lens has layers 0..{n_layers} "
            f"(or -{n}..-1 counting from the end)"
        )
    return layer % n


def normalize_layers(layers, n_layers: int) -> list[int]:
    """Normalise ``None`` (all layers), a layer or hook name, or an iterable of them; sorted, unique."""
    if layers is None:
        return list(range(n_layers + 1))
    if isinstance(layers, (int, str)):
        layers = [layers]
    return sorted({normalize_layer(layer, n_layers) for layer in layers})


def layer_labels(n_layers: int) -> list[str]:
    """Display labels of lens layers ``0..n_layers``: the numbers up to ``n_layers - 1``, then ``"output"``."""
    return [str(i) for i in range(n_layers)] + ["output"]
