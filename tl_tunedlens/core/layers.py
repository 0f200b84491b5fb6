"""Layer indexing: which TransformerLens hook point each lens layer reads.

The default convention: lens layer ``i`` in ``0..n_layers`` is the residual stream after ``i``
blocks: ``i = 0`` is ``blocks.0.hook_resid_pre`` (the embeddings) and ``i >= 1`` is
``blocks.{i-1}.hook_resid_post``. Layer ``n_layers`` is decoded with no translator, so the lens
there equals the model's own output. This matches the reference ``tuned-lens`` package's
``hidden_states[i]`` indexing one to one.

A lens may read other residual-stream hook points instead (:func:`lens_hook_names`): every
``blocks.{i}.hook_resid_mid`` (after attention, before the MLP: ``hooks="resid_mid"``) or any list
of ``blocks.{i}.hook_resid_pre/mid/post`` names (a Bridge's ``hook_in``/``hook_out`` are the same
streams). They are put in forward order, and the model's final residual stream is always appended
as the last lens layer (the output row), so a lens on ``m`` hook points has layers ``0..m``.

Wherever a layer number is accepted, so is the hook name of its site (:func:`layer_of_hook`):
``"blocks.10.hook_resid_post"`` is lens layer 11, ``"blocks.3.hook_resid_pre"`` lens layer 3;
a TransformerBridge's canonical names (``blocks.{i}.hook_in``/``hook_out``) and the hook points of
an sae-lens SAE at the site (``"blocks.10.hook_resid_post.hook_sae_output"``) name the same layer.
"""

from __future__ import annotations

import operator
import re
from typing import Sequence

from ..errors import LensError

#: a residual-stream hook point: block, then where in the block (a Bridge's hook_in/hook_out are aliases)
RESID_HOOK = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_mid|resid_post|in|out)$")
_STAGE = {"resid_pre": 0, "in": 0, "resid_mid": 1, "resid_post": 2, "out": 2}
#: named sets of hook points accepted by :func:`lens_hook_names`
HOOK_SETS = ("resid_mid",)
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


def as_index(value, what: str = "layer") -> int:
    """``value`` as a Python int when it is a whole number of an integer type (``int``, a numpy integer,
    a 0-d integer tensor); a bool, a float (even ``1.0``) or a string is a one-line error."""
    if not isinstance(value, bool) and "bool" not in str(getattr(value, "dtype", type(value).__name__)):
        try:
            return operator.index(value)  # ints, numpy ints and 0-d integer tensors; never floats or strings
        except TypeError:
            pass
    raise LensError(f"{what} must be an integer, got {value!r} ({type(value).__name__}): pass e.g. {what}=1")


def hook_depth(name: str, n_layers: int) -> int:
    """Position of residual hook ``name`` in the forward pass, in half-blocks: ``resid_pre`` of block
    ``i`` is ``2i``, its ``resid_mid`` ``2i + 1``, its ``resid_post`` ``2i + 2`` (= the next ``resid_pre``);
    the final residual stream is ``2 n_layers``. A one-line error for anything else."""
    match = RESID_HOOK.match(name) if isinstance(name, str) else None
    if match is None:
        raise LensError(f"{name!r} is not a residual-stream hook point: use blocks.{{i}}.hook_resid_pre, "
                        "hook_resid_mid or hook_resid_post")
    block = int(match.group(1))
    if block >= n_layers:
        raise LensError(f"{name!r} is past the last block: this model has blocks 0..{n_layers - 1}")
    return 2 * block + _STAGE[match.group(2)]


def lens_hook_names(n_layers: int, hooks: str | Sequence[str] | None = None) -> list[str]:
    """The hook name of every lens layer, the model's final residual stream last.

    ``hooks``: ``None`` (the default convention, :func:`resid_hook_names`), ``"resid_mid"`` (every
    ``blocks.{i}.hook_resid_mid``) or a list of residual hook names (sorted into forward order; a name
    reading the final residual stream is the output row and may be left out)."""
    if hooks is None:
        return resid_hook_names(n_layers)
    if isinstance(hooks, str):
        if hooks in HOOK_SETS:
            hooks = [f"blocks.{i}.hook_{hooks}" for i in range(n_layers)]
        else:
            hooks = [hooks]
    names = list(hooks)
    depths = [hook_depth(name, n_layers) for name in names]
    seen: dict[int, str] = {}
    for name, depth in zip(names, depths):
        if depth in seen:
            raise LensError(f"{seen[depth]!r} and {name!r} read the same residual stream: list it once")
        seen[depth] = name
    final = resid_hook_name(n_layers)
    out = [seen[d] for d in sorted(seen) if d < 2 * n_layers] + [final]
    if len(out) < 2:
        raise LensError("a lens needs at least one hook point before the final residual stream: "
                        f"pass e.g. hooks='resid_mid' or ['blocks.0.hook_resid_mid']")
    return out


def is_default_convention(hook_names: Sequence[str], n_layers: int) -> bool:
    """Whether ``hook_names`` are the default convention's (:func:`resid_hook_names`)."""
    return list(hook_names) == resid_hook_names(n_layers)


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
        raise LensError(f"{hook_name!r} is not a lens site: a layer must be an integer or the hook name it reads, "
                        "blocks.{i}.hook_resid_pre or blocks.{i}.hook_resid_post")
    block, after = int(match.group(1)), match.group(2) in ("hook_resid_post", "hook_out")
    if block >= n_layers:
        raise LensError(f"{hook_name!r} names block {block} but the model has blocks 0..{n_layers - 1}")
    return block + after


def normalize_layer(layer: int | str, n_layers: int) -> int:
    """Map a lens layer (negative counts from the end, like Python) or the hook name it reads
    (:func:`layer_of_hook`) to ``0..n_layers``."""
    layer = layer_of_hook(layer, n_layers) if isinstance(layer, str) else as_index(layer)
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
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__") or (
            hasattr(layers, "ndim") and layers.ndim == 0):
        layers = [layers]
    return sorted({normalize_layer(layer, n_layers) for layer in layers})


def translator_layers(layers, n_layers: int) -> list[int]:
    """The translators ``layers`` names (``None``: all), sorted and unique, in ``0..n_layers-1``: a lens
    has no translator at layer ``n_layers`` (the model's output, ``-1``), so naming it, or a layer out of
    range, is a one-line error giving the valid range both ways."""
    valid = f"train translators 0..{n_layers - 1} (or -{n_layers + 1}..-2 counting from the end)"
    if layers is None:
        return list(range(n_layers))
    out = set()
    for layer in ([layers] if isinstance(layers, (int, str)) else layers):
        try:
            index = normalize_layer(layer, n_layers)
        except LensError:
            raise LensError(f"layer {layer} is out of range: {valid}") from None
        if index == n_layers:
            raise LensError(f"layer {layer} is lens layer {n_layers}, the model's own output, which has no "
                            f"translator: {valid}")
        out.add(index)
    if not out:
        raise LensError(f"no layer to train: {valid}")
    return sorted(out)


def hook_label(name: str) -> str:
    """Short display label of a residual hook name: ``blocks.3.hook_resid_mid`` -> ``3.mid``."""
    match = RESID_HOOK.match(name)
    if match is None:
        return name
    return f"{match.group(1)}.{match.group(2).removeprefix('resid_')}"


def layer_labels(n_layers: int, hook_names: Sequence[str] | None = None) -> list[str]:
    """Display labels of lens layers ``0..n_layers``, then ``"output"``: the layer numbers under the
    default convention, else short hook labels (:func:`hook_label`) of ``hook_names``."""
    if hook_names is None or is_default_convention(hook_names, n_layers):
        return [str(i) for i in range(n_layers)] + ["output"]
    return [hook_label(name) for name in list(hook_names)[:-1]] + ["output"]
