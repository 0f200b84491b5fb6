"""Layer indexing: which TransformerLens hook point each lens layer reads.

Lens layer ``i`` in ``0..n_layers`` is the residual stream after ``i`` blocks:
``i = 0`` is ``blocks.0.hook_resid_pre`` (the embeddings) and ``i >= 1`` is
``blocks.{i-1}.hook_resid_post``. Layer ``n_layers`` is decoded with no translator,
so the lens there equals the model's own output. This matches the reference
``tuned-lens`` package's ``hidden_states[i]`` indexing one to one.
"""

from __future__ import annotations

from ..errors import LensError


def resid_hook_name(layer: int) -> str:
    """Hook name of the residual stream read by (non-negative) lens layer ``layer``."""
    if layer == 0:
        return "blocks.0.hook_resid_pre"
    return f"blocks.{layer - 1}.hook_resid_post"


def resid_hook_names(n_layers: int) -> list[str]:
    """Hook names of every lens layer ``0..n_layers`` (``n_layers + 1`` names)."""
    return [resid_hook_name(i) for i in range(n_layers + 1)]


def normalize_layer(layer: int, n_layers: int) -> int:
    """Map a lens layer (negative counts from the end, like Python) to ``0..n_layers``."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        try:
            layer = int(layer)  # accepts 0-d tensors and numpy ints
        except (TypeError, ValueError):
            raise LensError(f"layer must be an int, got {type(layer).__name__}") from None
    n = n_layers + 1
    if not -n <= layer < n:
        raise LensError(
            f"layer {layer} is out of range: this lens has layers 0..{n_layers} "
            f"(or -{n}..-1 counting from the end)"
        )
    return layer % n


def normalize_layers(layers, n_layers: int) -> list[int]:
    """Normalise ``None`` (all layers), an int, or an iterable of ints; sorted, unique."""
    if layers is None:
        return list(range(n_layers + 1))
    if isinstance(layers, int):
        layers = [layers]
    return sorted({normalize_layer(layer, n_layers) for layer in layers})


def layer_labels(n_layers: int) -> list[str]:
    """Display labels of lens layers ``0..n_layers``: the numbers up to ``n_layers - 1``, then ``"output"``."""
    return [str(i) for i in range(n_layers)] + ["output"]
