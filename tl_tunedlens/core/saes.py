"""Reading a lens site through an sae-lens SAE (``HookedSAETransformer``, ``SAETransformerBridge``).

When an SAE is attached at a hook point (``model.add_sae(sae)``, ``with model.saes([sae])``,
``run_with_cache_with_saes``), sae-lens replaces that ``HookPoint`` by a wrapper module whose own hook
points sit under the site's name: ``<site>.hook_sae_input`` (the residual entering the SAE, as the model
computed it), ``.hook_sae_acts_pre``/``.hook_sae_acts_post`` (the latents), ``.hook_sae_recons``,
``.hook_sae_error`` (with the error term on) and ``.hook_sae_output`` (what flows downstream: the
reconstruction, plus the error term when it is on). The plain name is then no hook point any more.

A lens reads such a site at ``hook_sae_output`` (``sae_read="output"``, the default: the residual the
rest of the model sees) or at ``hook_sae_input`` (``sae_read="input"``: the clean residual). On a
Bridge, sae-lens names them after the canonical hook (``blocks.{i}.hook_out.hook_sae_output``,
:func:`~tl_tunedlens.core.layers.bridge_hook_name`). An SAE whose input and output hooks differ (a
transcoder) writes its output at its output hook; ``sae_read="input"`` is the residual only for an SAE.

Only names are handled here: sae-lens is never imported by the lens core.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Container, Iterable

from ..errors import LensError
from .layers import bridge_hook_name

SAE_READS = ("output", "input")


def check_sae_read(sae_read: str) -> str:
    """``sae_read`` itself when it is ``"output"`` or ``"input"``; a one-line error otherwise."""
    if sae_read not in SAE_READS:
        raise LensError(f"sae_read must be 'output' (what flows downstream of an SAE) or 'input' (the clean "
                        f"residual), got {sae_read!r}")
    return sae_read


def sae_hook_names(hook_name: str, sae_hook: str) -> list[str]:
    """Names of the hook point ``sae_hook`` (e.g. ``"hook_sae_acts_post"``) of an SAE attached at lens
    site ``hook_name``, under the site's own name and its Bridge canonical name."""
    return list(dict.fromkeys(f"{name}.{sae_hook}" for name in (hook_name, bridge_hook_name(hook_name))))


@lru_cache(maxsize=4096)
def site_candidates(hook_name: str, sae_read: str = "output") -> tuple[str, ...]:
    """Names under which the residual of lens site ``hook_name`` may be found, best first: an attached SAE's
    ``hook_sae_<sae_read>`` (under either name), then the plain hook and its Bridge canonical name. The SAE
    comes first because a Bridge in compatibility mode keeps the alias of a hook point that sae-lens
    replaced in its ``hook_dict`` (a hook there never fires)."""
    check_sae_read(sae_read)
    plain = list(dict.fromkeys((hook_name, bridge_hook_name(hook_name))))
    return tuple(sae_hook_names(hook_name, f"hook_sae_{sae_read}") + plain)


def find_site(hook_name: str, available: Container[str], sae_read: str = "output") -> str | None:
    """The name under which ``available`` (a cache, a model's ``hook_dict``) holds lens site ``hook_name``."""
    return next((name for name in site_candidates(hook_name, sae_read) if name in available), None)


def missing_site(hook_name: str, available: Container[str], sae_read: str, fix: str, where: str) -> LensError:
    """The one-line error for a lens site absent from ``available`` (``where``: ``"the cache"``, ``"the model"``)
    under every name: it says whether an SAE is attached there and what to do (``fix``)."""
    other = "input" if sae_read == "output" else "output"
    if find_site(hook_name, available, other) not in (None, hook_name, bridge_hook_name(hook_name)):
        return LensError(f"{hook_name!r} is wrapped by an SAE and {where} has only its hook_sae_{other}, not "
                         f"hook_sae_{sae_read}: pass sae_read={other!r} or {fix}")
    return LensError(f"{where} has no hook point {hook_name!r} (nor, with an sae-lens SAE attached there, its "
                     f"hook_sae_{sae_read}): {fix}")


class SiteFilter:
    """A hook-name predicate for TransformerLens (``fwd_hooks``, ``names_filter``) that matches lens sites
    under every name they may have (:func:`site_candidates`): a hook placed with it reads through an
    SAE attached there, and at most one name of a site is a hook point at a time (the plain hook, or
    the SAE's; a Bridge registers a hook point once whichever of its names match)."""

    def __init__(self, hook_names: Iterable[str], sae_reads: Iterable[str] = ("output",)):
        self.hook_names = tuple(hook_names)
        self.names = frozenset(name for site in self.hook_names for read in sae_reads
                               for name in site_candidates(site, read))

    def __call__(self, name: str) -> bool:
        return name in self.names

    def __repr__(self) -> str:
        return f"SiteFilter({', '.join(self.hook_names)})"
