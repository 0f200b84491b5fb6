"""Hub loading and pushing without a network.

- the real ``huggingface_hub`` cache: a cache folder laid out like the hub's (``models--org--name/
  refs/<rev>``, ``snapshots/<commit>/...``) is read with ``HF_HUB_OFFLINE=1`` or an unreachable
  endpoint; uncached lenses fail at once;
- the online code path: ``hf_hub_download`` and ``HfApi`` replaced by local fakes.
"""

from __future__ import annotations

import shutil
import socket

import pytest
import torch
from conftest import make_tiny_model

from tl_tunedlens import LensError, TunedLens
from tl_tunedlens.artifacts import hub

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


@pytest.fixture
def connections(monkeypatch):
    """Every socket connection attempted during the test: ``(address, timeout in seconds or None)``.
    "Fails fast" is asserted as "tried at most once, with a bounded timeout" (never by the wall clock)."""
    seen: list[tuple[object, float | None]] = []
    real = socket.socket.connect

    def connect(sock, address):
        seen.append((address, sock.gettimeout()))
        return real(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


@torch.no_grad()
def trained_lens(model, seed):
    lens = TunedLens.from_model(model)
    gen = torch.Generator().manual_seed(seed)
    for param in lens.parameters():
        param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    return lens


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def put_in_cache(cache, repo_id, lens_folder, *, commit, refs=("main",), repo_type="model", subfolder=""):
    """Lay ``lens_folder``'s files out as huggingface_hub's cache does for ``repo_id``@``commit``."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    target = repo / "snapshots" / commit / subfolder
    target.mkdir(parents=True, exist_ok=True)
    for file in lens_folder.iterdir():
        shutil.copy(file, target / file.name)
    (repo / "refs").mkdir(exist_ok=True)
    for ref_name in refs:
        (repo / "refs" / ref_name).write_text(commit)


@pytest.fixture
def model():
    return make_tiny_model("RMS")


@pytest.fixture
def cached(tmp_path, model):
    """Two versions of user/tiny-lens in a cache: main -> A, v2 -> B; a reference lens in the space."""
    cache = tmp_path / "hf-cache"
    lens_a, lens_b, lens_ref = trained_lens(model, 1), trained_lens(model, 2), trained_lens(model, 3)
    for name, lens, fmt in (("a", lens_a, "tl-tunedlens"), ("b", lens_b, "tl-tunedlens"), ("r", lens_ref, "tuned-lens")):
        lens.save(tmp_path / name, format=fmt)
    put_in_cache(cache, "user/tiny-lens", tmp_path / "a", commit=COMMIT_A)
    put_in_cache(cache, "user/tiny-lens", tmp_path / "b", commit=COMMIT_B, refs=("v2",))
    put_in_cache(cache, "AlignmentResearch/tuned-lens", tmp_path / "r", commit=COMMIT_A, repo_type="space",
                 subfolder="lens/tiny-model")
    return cache, {"a": lens_a, "b": lens_b, "ref": lens_ref}


def test_offline_cached_lens_loads_with_revision(cached, model, monkeypatch):
    cache, lenses = cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert same(TunedLens.from_pretrained("user/tiny-lens", model=model, cache_dir=cache), lenses["a"])
    assert same(TunedLens.from_pretrained("user/tiny-lens", model=model, revision="v2", cache_dir=cache), lenses["b"])
    assert same(TunedLens.from_pretrained("user/tiny-lens", model, COMMIT_B, cache), lenses["b"])
    # a model name not in a repo of its own: the reference space, lens/<name>
    assert same(TunedLens.from_pretrained("tiny-model", model=model, cache_dir=cache), lenses["ref"])


def test_offline_uncached_lens_fails_at_once(cached, model, monkeypatch, connections):
    cache, _ = cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LensError, match="HF_HUB_OFFLINE=1 is set and it is not in the local Hugging Face cache") as info:
        TunedLens.from_pretrained("user/other-lens", model=model, cache_dir=cache)
    assert connections == []   # no network was tried
    assert "\n" not in str(info.value) and "space AlignmentResearch/tuned-lens (subfolder lens/user/other-lens)" in str(info.value)
    with pytest.raises(LensError, match="revision 'v3'"):
        TunedLens.from_pretrained("user/tiny-lens", model=model, revision="v3", cache_dir=cache)


def test_unreachable_hub_uses_cache_and_fails_fast(cached, model, monkeypatch, connections):
    cache, lenses = cached
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    assert same(TunedLens.from_pretrained("user/tiny-lens", model=model, cache_dir=cache), lenses["a"])
    with pytest.raises(LensError, match=r"hub \(http://127.0.0.1:9\) is unreachable"):
        TunedLens.from_pretrained("user/other-lens", model=model, cache_dir=cache)
    # one bounded probe per call, nothing else tried
    assert 1 <= len(connections) <= 2 and all(t is not None and t <= hub.REACH_TIMEOUT_S for _, t in connections)
    with pytest.raises(LensError, match="cannot push to 'user/x'.*unreachable"):
        lenses["a"].push_to_hub("user/x")


def test_reachability_check_times_out_quickly(monkeypatch, connections):
    silent = socket.socket()  # accepts connections (backlog) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        assert not hub.hub_reachable(timeout=0.5)
        assert [t for _, t in connections] == [0.5]   # one attempt, given the caller's timeout
    finally:
        silent.close()


# --- the online path, with local fakes ------------------------------------------------------
class FakeHub:
    """Serves files from local folders standing in for hub repos; records every call."""

    def __init__(self, repos):
        self.repos, self.calls = repos, []

    def download(self, repo_id, filename, *, subfolder=None, repo_type=None, revision=None, cache_dir=None,
                 local_files_only=False, **kwargs):
        try:
            import httpx2 as httpx  # huggingface_hub 2.x's HTTP client
        except ImportError:  # pragma: no cover - older huggingface_hub
            import httpx
        from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError

        self.calls.append(dict(repo_id=repo_id, filename=filename, subfolder=subfolder, repo_type=repo_type,
                               revision=revision, cache_dir=cache_dir, local_files_only=local_files_only))
        response = httpx.Response(404, request=httpx.Request("GET", "https://hub.invalid"))
        if (repo_type, repo_id) not in self.repos:
            raise RepositoryNotFoundError(f"404 Repository Not Found for {repo_id}", response=response)
        path = self.repos[(repo_type, repo_id)] / (subfolder or "") / filename
        if not path.is_file():
            raise RemoteEntryNotFoundError(f"404 Entry Not Found for {filename}", response=response)
        return str(path)


def test_online_download_honours_revision_cache_and_falls_back_to_space(tmp_path, model, monkeypatch):
    ours, theirs = trained_lens(model, 4), trained_lens(model, 5)
    ours.save(tmp_path / "repo")
    theirs.save(tmp_path / "space" / "lens" / "tiny-model", format="tuned-lens")
    (tmp_path / "model-repo").mkdir()  # a model repo named like the model: its config.json is no lens
    (tmp_path / "model-repo" / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 3, "hidden_size": 16}')
    fake = FakeHub({("model", "user/tiny-lens"): tmp_path / "repo", ("model", "tiny-model"): tmp_path / "model-repo",
                    ("space", "AlignmentResearch/tuned-lens"): tmp_path / "space"})
    monkeypatch.setattr(hub, "hf_hub_download", fake.download)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=0: True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    lens = TunedLens.from_pretrained("user/tiny-lens", model=model, revision="v1", cache_dir=tmp_path / "c")
    assert same(lens, ours)
    assert {(c["filename"], c["revision"], c["cache_dir"], c["local_files_only"]) for c in fake.calls} == {
        ("config.json", "v1", str(tmp_path / "c"), False), ("lens.safetensors", "v1", str(tmp_path / "c"), False)}

    fake.calls.clear()
    assert same(TunedLens.from_pretrained("tiny-model", model=model), theirs)
    assert [(c["repo_type"], c["repo_id"], c["subfolder"], c["filename"]) for c in fake.calls] == [
        ("model", "tiny-model", None, "config.json"),
        ("space", "AlignmentResearch/tuned-lens", "lens/tiny-model", "config.json"),
        ("space", "AlignmentResearch/tuned-lens", "lens/tiny-model", "params.pt")]

    with pytest.raises(LensError, match="no lens 'nobody/nothing' on the Hugging Face hub"):
        TunedLens.from_pretrained("nobody/nothing", model=model)
    (tmp_path / "repo" / "lens.safetensors").unlink()
    with pytest.raises(LensError, match="has config.json but no lens.safetensors"):
        TunedLens.from_pretrained("user/tiny-lens", model=model)


class FakeApi:
    instances: list = []

    def __init__(self, token=None):
        self.token, self.calls, self.uploaded = token, [], {}
        FakeApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        self.uploaded_to = FakeApi.target / repo_id.replace("/", "--")
        shutil.copytree(folder_path, self.uploaded_to)
        return type("CommitInfo", (), {"commit_url": f"https://hub.invalid/{repo_id}/commit/1"})()


@pytest.mark.parametrize("fmt", ["tl-tunedlens", "tuned-lens"])
def test_push_to_hub_uploads_a_loadable_lens(tmp_path, model, monkeypatch, fmt):
    FakeApi.instances, FakeApi.target = [], tmp_path / "uploaded"
    monkeypatch.setattr(hub, "HfApi", FakeApi)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=0: True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    lens = trained_lens(model, 6)
    url = lens.push_to_hub("user/pushed", format=fmt, private=True, revision="dev", token="tok")
    assert url == "https://hub.invalid/user/pushed/commit/1"
    api = FakeApi.instances[0]
    assert api.token == "tok" and [c[0] for c in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][2]["private"] is True and api.calls[2][2]["revision"] == "dev"
    assert same(TunedLens.load(api.uploaded_to, model), lens)


def test_push_offline_fails_before_anything(model, monkeypatch):
    FakeApi.instances = []
    monkeypatch.setattr(hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LensError, match="HF_HUB_OFFLINE=1 is set"):
        trained_lens(model, 7).push_to_hub("user/x")
    assert FakeApi.instances == []
