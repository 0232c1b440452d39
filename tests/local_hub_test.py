"""Round trips through the local Hub: real huggingface_hub client, real olah mirror for reads, our push server."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

import local_hub
import local_hub_push

TOKEN = "hf_local_test_token_123"


@pytest.fixture(scope="module")
def upstream_hits() -> Iterator[tuple[str, list[object]]]:
    """A listener standing in for huggingface.co: it records every connection olah makes to "the Hub"."""
    hits: list[object] = []
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, addr = server.accept()
            except OSError:
                continue
            hits.append(addr)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}", hits
    stop.set()
    thread.join()
    server.close()


@pytest.fixture(scope="module")
def repos_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("repos")


@pytest.fixture(scope="module")
def olah_url(repos_root: Path, upstream_hits: tuple[str, list[object]]) -> Iterator[str]:
    """olah on the shared repos folder; fails at teardown if any test made it contact its upstream."""
    netloc, hits = upstream_hits
    with local_hub.serve_olah(repos_root, upstream_netloc=netloc) as url:
        # Control: olah always forwards whoami upstream, so the listener must see exactly that one connection.
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url + "/api/whoami-v2", timeout=30)
        assert len(hits) == 1, "the upstream listener did not see olah's whoami request"
        hits.clear()
        yield url
    assert hits == [], f"olah contacted its upstream ({netloc}) although every repo is mirrored locally"


def _model_files(scale: float) -> dict[str, bytes]:
    weights = {
        "head/kernel": np.arange(12, dtype=np.float32).reshape(3, 4) * scale,
        "head/bias": np.ones(4, np.float32),
    }
    return {
        "config.json": json.dumps({"model": "vit", "scale": scale}).encode(),
        "model.safetensors": save_safetensors(weights, metadata={"format": "flax"}),
        "README.md": b"---\nlibrary_name: bv\n---\n# tiny test model\n",
    }


def _read_tree(folder: str | Path) -> dict[str, bytes]:
    root = Path(folder)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_snapshot_download_through_olah_by_branch_and_sha(
    repos_root: Path, olah_url: str, upstream_hits: tuple[str, list[object]], tmp_path: Path
) -> None:
    first = _model_files(1.0)
    sha1 = local_hub.make_git_model_repo(repos_root, "org/tiny", first)
    second = _model_files(2.0)
    sha2 = local_hub.make_git_model_repo(repos_root, "org/tiny", second, message="Scale weights")
    assert sha1 != sha2 and len(sha2) == 40

    latest = snapshot_download("org/tiny", endpoint=olah_url, cache_dir=tmp_path / "a")
    assert Path(latest).name == sha2
    assert _read_tree(latest) == second
    np.testing.assert_array_equal(
        load_safetensors(Path(latest, "model.safetensors").read_bytes())["head/kernel"],
        np.arange(12, dtype=np.float32).reshape(3, 4) * 2.0,
    )

    pinned = snapshot_download("org/tiny", revision=sha1, endpoint=olah_url, cache_dir=tmp_path / "b")
    assert _read_tree(pinned) == first
    config = hf_hub_download("org/tiny", "config.json", revision=sha1, endpoint=olah_url, cache_dir=tmp_path / "c")
    assert Path(config).read_bytes() == first["config.json"]

    host, hits = upstream_hits
    assert hits == [], f"olah contacted its upstream ({host}) although the repo is mirrored locally"


def test_wrong_revision_raises_hub_errors(repos_root: Path, olah_url: str, tmp_path: Path) -> None:
    local_hub.make_git_model_repo(repos_root, "org/revs", {"config.json": b"{}"})
    # olah 0.5.4 offline answers an unknown branch/tag with 401 RepoNotFound (not RevisionNotFound).
    with pytest.raises(RepositoryNotFoundError, match="revision/no-such-branch"):
        snapshot_download("org/revs", revision="no-such-branch", endpoint=olah_url, cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError, match="resolve/no-such-branch/config.json"):
        hf_hub_download("org/revs", "config.json", revision="no-such-branch", endpoint=olah_url, cache_dir=tmp_path)
    # A well-formed sha that is not in the repo: the file listing is missing, and nothing is cached to fall back on.
    with pytest.raises(LocalEntryNotFoundError, match="cannot find the appropriate snapshot"):
        snapshot_download("org/revs", revision="f" * 40, endpoint=olah_url, cache_dir=tmp_path)


def test_push_then_pull_round_trip_keeps_history(
    repos_root: Path, olah_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="local_hub")
    rng = np.random.default_rng(0)
    folder = tmp_path / "model"
    folder.mkdir()
    files = {
        "config.json": b'{"model": "vit", "num_classes": 10}',
        "model.safetensors": rng.integers(0, 256, size=2 * 1024 * 1024, dtype=np.uint8).tobytes(),
        "README.md": b"---\nlibrary_name: bv\ntags: [vision]\n---\n# pushed\n",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)

    with local_hub_push.serve_push_endpoint(repos_root, token=TOKEN) as push_url:
        api = HfApi(endpoint=push_url, token=TOKEN)
        repo_url = api.create_repo("org/new", exist_ok=True)
        assert repo_url.repo_id == "org/new"
        assert api.create_repo("org/new", exist_ok=True).repo_id == "org/new"  # existing repo: no error
        first = api.upload_folder(repo_id="org/new", folder_path=folder, commit_message="Upload model")

        (folder / "config.json").write_bytes(b'{"model": "vit", "num_classes": 5}')
        second = api.upload_folder(repo_id="org/new", folder_path=folder, commit_message="Fewer classes")
        unchanged = api.upload_folder(repo_id="org/new", folder_path=folder, commit_message="No change")

    assert first.oid != second.oid
    assert unchanged.oid == second.oid  # preupload's blob oids let the client skip unchanged files
    assert second.commit_url.endswith(f"/org/new/commit/{second.oid}")

    pulled = _read_tree(snapshot_download("org/new", endpoint=olah_url, cache_dir=tmp_path / "latest"))
    assert pulled.pop(".gitattributes").startswith(b"#")  # written by create_repo, as the Hub does
    assert pulled == {**files, "config.json": b'{"model": "vit", "num_classes": 5}'}

    old = hf_hub_download("org/new", "config.json", revision=first.oid, endpoint=olah_url, cache_dir=tmp_path / "old")
    assert Path(old).read_bytes() == files["config.json"]

    history = local_hub.repo_history(repos_root, "org/new")
    assert [title for _, title in history] == ["Fewer classes", "Upload model", "initial commit"]
    assert [sha for sha, _ in history][:2] == [second.oid, first.oid]
    assert TOKEN not in caplog.text and "POST /api/" in caplog.text


def test_push_endpoint_rejects_missing_or_wrong_token(repos_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="local_hub")
    with local_hub_push.serve_push_endpoint(repos_root, token=TOKEN) as push_url:
        for token in ("wrong-token", False):
            with pytest.raises(HfHubHTTPError) as info:
                HfApi(endpoint=push_url, token=token).create_repo("org/denied")
            assert info.value.response.status_code == 401
            assert not isinstance(info.value, RepositoryNotFoundError)
            assert "Invalid credentials" in str(info.value)
        assert HfApi(endpoint=push_url, token=TOKEN).whoami()["name"] == "local-user"
    assert not local_hub.repo_path(repos_root, "org/denied").exists()
    assert "wrong-token" not in caplog.text and TOKEN not in caplog.text


def test_push_errors_speak_hub_error_codes(repos_root: Path) -> None:
    with local_hub_push.serve_push_endpoint(repos_root) as push_url:
        api = HfApi(endpoint=push_url, token=False)
        with pytest.raises(RepositoryNotFoundError):
            api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="org/absent")
        api.create_repo("org/branchy")
        with pytest.raises(RevisionNotFoundError, match="Invalid rev id: dev"):
            api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="org/branchy", revision="dev")

        adds = [CommitOperationAdd(p, b"x") for p in ("keep.txt", "dir/a.txt", "dir/b.txt")]
        api.create_commit("org/branchy", adds, commit_message="Add three")
        with pytest.raises(RemoteEntryNotFoundError, match="doesn't exist"):
            api.create_commit("org/branchy", [CommitOperationDelete("nope.txt")], commit_message="Delete")
        api.create_commit("org/branchy", [CommitOperationDelete("dir/")], commit_message="Delete folder")
        siblings = api.model_info("org/branchy", revision="main").siblings or []
        assert sorted(s.rfilename for s in siblings) == [".gitattributes", "keep.txt"]


def test_use_endpoint_redirects_calls_without_endpoint_argument(
    repos_root: Path, olah_url: str, tmp_path: Path
) -> None:
    local_hub.make_git_model_repo(repos_root, "org/implicit", {"config.json": b'{"x": 1}'})
    before = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, os.environ.get("HF_ENDPOINT"))
    with local_hub.use_endpoint(olah_url):
        path = hf_hub_download("org/implicit", "config.json", cache_dir=tmp_path)  # no endpoint= here
        assert os.environ["HF_ENDPOINT"] == olah_url
    assert Path(path).read_bytes() == b'{"x": 1}'
    assert (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, os.environ.get("HF_ENDPOINT")) == before


def test_make_git_model_repo_takes_a_folder_and_rejects_bad_ids(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "a.txt").write_bytes(b"a")
    sha = local_hub.make_git_model_repo(tmp_path / "repos", "solo", source)
    repo = local_hub.repo_path(tmp_path / "repos", "solo")
    assert repo == tmp_path / "repos" / "models" / "solo"
    assert local_hub._list_files(repo, sha).keys() == {"sub/a.txt"}
    with pytest.raises(ValueError, match="Invalid repo id"):
        local_hub.make_git_model_repo(tmp_path / "repos", "../escape", {"a": b"a"})
    with pytest.raises(ValueError, match="Invalid path in repo"):
        local_hub.make_git_model_repo(tmp_path / "repos", "org/bad-path", {"../a": b"a"})
