"""Models from the Hugging Face hub: the one fail-fast check both backends make before loading one."""

from __future__ import annotations

from ..artifacts.hub import hub_offline, hub_reachable
from ..errors import ModelLoadError


def in_hub_cache(repo_id: str) -> bool:
    """Whether the Hugging Face cache holds ``repo_id``'s ``config.json`` (no network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def not_cached(repo_id: str) -> ModelLoadError:
    """The error for a hub model that ``HF_HUB_OFFLINE=1`` forbids downloading and the cache lacks."""
    return ModelLoadError(f"cannot load {repo_id!r} with HF_HUB_OFFLINE=1: it is not in the local Hugging Face "
                          "cache (unset HF_HUB_OFFLINE with the internet on to download it)")


def require_hub_model(repo_id: str) -> None:
    """Return at once when ``repo_id`` can be loaded (hub reachable, or offline and cached); else raise
    a one-line ``ModelLoadError`` saying what to do."""
    if hub_offline():
        if not in_hub_cache(repo_id):
            raise not_cached(repo_id)
    elif not hub_reachable():
        raise ModelLoadError(
            f"cannot load {repo_id!r}: the Hugging Face hub is unreachable; connect to the internet, set "
            "HF_HUB_OFFLINE=1 to use a cached copy, or use the offline model 'smollm2-135m'"
        )
