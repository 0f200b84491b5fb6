"""Lenses on the Hugging Face hub, through ``huggingface_hub`` (its cache, revisions and token).

``download_lens(id)`` looks for a lens in two places, in order:

1. the repo ``id`` itself (``repo_type`` "model" unless given; files at its root or in ``subfolder``):
   our ``config.json`` + ``lens.safetensors``, or a reference ``config.json`` + ``params.pt``;
2. the reference package's space ``AlignmentResearch/tuned-lens`` (``$TUNED_LENS_REPO_ID`` overrides),
   subfolder ``lens/<id>`` (``id`` = the model name, e.g. ``gpt2``).

With ``HF_HUB_OFFLINE=1``, or when the hub cannot be reached (checked with one short ``HEAD``
request, so nothing waits on long network timeouts), only the local cache is used: a cached lens
loads, an uncached one fails at once with a clear message.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HFValidationError, HfHubHTTPError, RepositoryNotFoundError

from ..errors import LensError, first_line
from . import reference as ref
from .native import CONFIG_NAME, WEIGHTS_NAME

REACH_TIMEOUT_S = 2.0


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set to a true value (read at call time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_endpoint() -> str:
    """The Hugging Face endpoint (``$HF_ENDPOINT`` or https://huggingface.co), without a trailing slash."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_reachable(timeout: float = REACH_TIMEOUT_S) -> bool:
    """Does the hub endpoint answer an HTTP ``HEAD`` within ``timeout`` seconds (DNS included)?

    Any HTTP status counts as an answer; refused/unresolvable/timed-out connections and TLS
    failures (e.g. an intercepting proxy) do not. Proxies from the environment are honoured."""
    request = urllib.request.Request(hub_endpoint() + "/", method="HEAD")

    def probe() -> bool:
        try:
            urllib.request.urlopen(request, timeout=timeout).close()
        except urllib.error.HTTPError:
            pass  # the server answered
        return True

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(probe).result(timeout=timeout + 0.5)
    except (OSError, ValueError, concurrent.futures.TimeoutError):
        return False
    finally:
        pool.shutdown(wait=False)


def why_local_only() -> str | None:
    """Why only the local Hugging Face cache can be used right now (a short phrase), or ``None`` when
    the hub is usable: ``HF_HUB_OFFLINE`` is set, or the endpoint does not answer (:func:`hub_reachable`).
    The one check every hub route (lenses, models, datasets) makes before it downloads."""
    if hub_offline():
        return "HF_HUB_OFFLINE=1 is set"
    if not hub_reachable():
        return f"the Hugging Face hub ({hub_endpoint()}) is unreachable"
    return None


def reference_repo_id() -> str:
    """The reference project's hub repository of lenses (``$TUNED_LENS_REPO_ID`` overrides it)."""
    return os.environ.get("TUNED_LENS_REPO_ID") or ref.HUB_REPO_ID


def _candidates(repo_id: str, repo_type: str | None, subfolder: str | None) -> list[tuple[str, str, str | None]]:
    if repo_type is not None or subfolder is not None:
        return [(repo_id, repo_type or "model", subfolder)]
    ref_type = os.environ.get("TUNED_LENS_REPO_TYPE") or ref.HUB_REPO_TYPE
    return [(repo_id, "model", None), (reference_repo_id(), ref_type, f"{ref.HUB_SUBFOLDER}/{repo_id}")]


def _describe(repo_id: str, repo_type: str, subfolder: str | None) -> str:
    where = f"{repo_type} {repo_id}"
    return f"{where} (subfolder {subfolder})" if subfolder else where


def download_lens(repo_id: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                  repo_type: str | None = None, subfolder: str | None = None, token: str | bool | None = None,
                  download: Callable = None) -> Path:
    """Fetch a lens into the Hugging Face cache and return the local folder holding its files."""
    download = download or hf_hub_download
    why_local = why_local_only()
    tried = []
    for cand_repo, cand_type, cand_sub in _candidates(repo_id, repo_type, subfolder):
        where = _describe(cand_repo, cand_type, cand_sub)
        kwargs = dict(repo_id=cand_repo, repo_type=cand_type, subfolder=cand_sub, revision=revision,
                      cache_dir=None if cache_dir is None else str(cache_dir), local_files_only=why_local is not None)
        if token is not None:
            kwargs["token"] = token
        try:
            config_path = Path(download(filename=CONFIG_NAME, **kwargs))
        except (EntryNotFoundError, RepositoryNotFoundError, HFValidationError):
            tried.append(where)
            continue
        except (HfHubHTTPError, OSError) as err:
            raise LensError(f"cannot download {CONFIG_NAME} from {where}: {first_line(err)}") from None
        weights = _weights_name(config_path)
        if weights is None:  # e.g. the model repo "gpt2": its config.json is a model's, not a lens's
            tried.append(f"{where} (its {CONFIG_NAME} is not a lens config)")
            continue
        try:
            weights_path = Path(download(filename=weights, **kwargs))
        except (EntryNotFoundError, RepositoryNotFoundError) as err:
            raise LensError(f"{where} has {CONFIG_NAME} but no {weights} ({first_line(err)}): the upload is incomplete") from None
        except (HfHubHTTPError, OSError) as err:
            raise LensError(f"cannot download {weights} from {where}: {first_line(err)}") from None
        if weights_path.parent != config_path.parent:  # pragma: no cover - the cache keeps one snapshot per commit
            raise LensError(f"{where}: {CONFIG_NAME} and {weights} resolved to different snapshots; retry")
        return config_path.parent
    rev = f" at revision {revision!r}" if revision else ""
    if why_local is not None:
        cache = f" ({cache_dir})" if cache_dir else ""
        raise LensError(
            f"cannot load lens {repo_id!r}{rev}: {why_local} and it is not in the local Hugging Face cache{cache} "
            f"(looked in {'; '.join(tried)}): connect to the internet and unset HF_HUB_OFFLINE, or pass a local folder"
        )
    raise LensError(f"no lens {repo_id!r}{rev} on the Hugging Face hub (looked in {'; '.join(tried)}): check the id, "
                    "revision and repo_type, or pass a local folder")


def _weights_name(config_path: Path) -> str | None:
    """The weights file that goes with this ``config.json``; None when it is not a lens config."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    if not isinstance(config, dict):
        return None
    if ref.is_reference_config(config):
        return ref.PARAMS_NAME
    return WEIGHTS_NAME if "format_version" in config else None


def upload_lens(save: Callable[[Path], object], repo_id: str, *, repo_type: str = "model",
                path_in_repo: str | None = None, revision: str | None = None, private: bool | None = None,
                token: str | None = None, commit_message: str | None = None) -> str:
    """Save a lens with ``save(folder)`` into a temporary folder and upload it; returns the commit URL."""
    why_local = why_local_only()
    if why_local is not None:
        raise LensError(f"cannot push to {repo_id!r}: {why_local}; connect to the internet and unset HF_HUB_OFFLINE")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="tl_tunedlens_push_") as tmp:
            folder = Path(tmp) / "lens"
            save(folder)
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), path_in_repo=path_in_repo,
                                     repo_type=repo_type, revision=revision,
                                     commit_message=commit_message or "Upload tuned lens (tl_tunedlens)")
    except (HfHubHTTPError, OSError) as err:
        raise LensError(f"cannot push the lens to {repo_type} {repo_id}: {first_line(err)}") from None
    return str(getattr(info, "commit_url", info))
