"""ViT models through a Hub on 127.0.0.1: pushed with HfApi, pulled through olah, and from the cache offline.

Real: huggingface_hub's client (snapshot_download, HfApi.create_repo/upload_folder), olah (the read mirror),
git (the repos), bv's save/load. Ours: the small push endpoint in local_hub.py (olah is read-only).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import jax
import local_hub
import local_hub_push
import numpy as np
import pytest

from bv.core.hub import SourceError
from bv.vit import ViT

VARIANTS: list[dict[str, Any]] = [
    {"variant": "mu/8", "pool_type": "gap"},
    {"variant": "mu/8", "pool_type": "map"},
    {"variant": "Ti/16", "pool_type": "tok"},
    {"variant": "mu/4", "pool_type": "tok", "scan": True, "posemb": "sincos2d"},
]


def _model(seed: int, **kw: Any) -> ViT:
    return ViT.create(num_classes=5, resolution=32, head_zeroinit=False, seed=seed, **kw)


def _images() -> np.ndarray:
    return np.random.RandomState(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)


def _assert_bitwise(a: Any, b: Any) -> None:
    assert str(jax.tree.structure(a)) == str(jax.tree.structure(b))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):
    repos = tmp_path_factory.mktemp("repos")
    with local_hub.serve_olah(repos) as url:
        yield repos, url


def test_pull_through_olah_is_bitwise_for_several_variants(hub: Any, tmp_path: Path) -> None:
    repos, url = hub
    for i, kw in enumerate(VARIANTS):
        model = _model(i, **kw)
        model.save_pretrained(tmp_path / f"m{i}")
        local_hub.make_git_model_repo(repos, f"org/vit{i}", tmp_path / f"m{i}")
        with local_hub.use_endpoint(url):
            loaded = ViT.from_pretrained(f"org/vit{i}", cache_dir=tmp_path / "cache")
        _assert_bitwise(model.params, loaded.params)
        np.testing.assert_array_equal(np.asarray(model(_images())), np.asarray(loaded(_images())))
        assert loaded.config == model.config


def test_revision_pins_a_commit_and_a_wrong_one_fails_clearly(hub: Any, tmp_path: Path) -> None:
    repos, url = hub
    old, new = _model(1, variant="mu/8"), _model(2, variant="mu/8")
    old.save_pretrained(tmp_path / "old")
    new.save_pretrained(tmp_path / "new")
    old_sha = local_hub.make_git_model_repo(repos, "org/pinned", tmp_path / "old")
    local_hub.make_git_model_repo(repos, "org/pinned", tmp_path / "new")
    with local_hub.use_endpoint(url):
        _assert_bitwise(new.params, ViT.from_pretrained("org/pinned", cache_dir=tmp_path / "c").params)
        _assert_bitwise(
            old.params, ViT.from_pretrained("org/pinned", revision=old_sha, cache_dir=tmp_path / "c").params
        )
        with pytest.raises(SourceError, match="revision 'no-such-branch'"):
            ViT.from_pretrained("org/pinned", revision="no-such-branch", cache_dir=tmp_path / "c")


def test_push_to_hub_then_pull(hub: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: Any) -> None:
    repos, olah_url = hub
    model = _model(7, variant="mu/8", pool_type="tok")
    token = "hf_secret_token_that_must_not_leak"
    caplog.set_level(logging.DEBUG)
    with local_hub_push.serve_push_endpoint(repos, token=token) as push_url:
        with local_hub.use_endpoint(push_url):
            url = model.push_to_hub("org/pushed", token=token, commit_message="First upload")
            with pytest.raises(Exception, match="401|Invalid credentials"):
                model.push_to_hub("org/pushed", token="wrong")
    assert "org/pushed" in str(url)
    assert local_hub.repo_history(repos, "org/pushed")[0][1] == "First upload"  # newest first
    with local_hub.use_endpoint(olah_url):
        loaded = ViT.from_pretrained("org/pushed", cache_dir=tmp_path / "cache")
    _assert_bitwise(model.params, loaded.params)
    out, err = capfd.readouterr()
    assert token not in caplog.text and token not in out and token not in err


def test_offline_uses_the_cache_and_fails_fast_when_uncached(hub: Any, tmp_path: Path) -> None:
    repos, url = hub
    model = _model(3, variant="mu/8")
    model.save_pretrained(tmp_path / "m")
    local_hub.make_git_model_repo(repos, "org/cached", tmp_path / "m")
    with local_hub.use_endpoint(url):
        ViT.from_pretrained("org/cached", cache_dir=tmp_path / "cache")  # fills the cache
    expected = np.asarray(model(_images()))
    np.save(tmp_path / "expected.npy", expected)
    np.save(tmp_path / "images.npy", _images())
    script = textwrap.dedent(
        f"""
        import time, numpy as np
        from bv.vit import ViT
        from bv.core.hub import SourceError
        model = ViT.from_pretrained("org/cached", cache_dir={str(tmp_path / "cache")!r})
        np.testing.assert_array_equal(np.asarray(model(np.load({str(tmp_path / "images.npy")!r}))),
                                      np.load({str(tmp_path / "expected.npy")!r}))
        start = time.perf_counter()
        try:
            ViT.from_pretrained("org/never-downloaded", cache_dir={str(tmp_path / "cache")!r})
        except SourceError as e:
            print("ERROR:", e)
        print(f"SECONDS: {{time.perf_counter() - start:.3f}}")
        """
    )
    # A real HF_HUB_OFFLINE=1 (read at import), and an endpoint where nothing listens.
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "org/never-downloaded is not in the local Hub cache" in result.stdout
    assert "HF_HUB_OFFLINE=1" in result.stdout
    seconds = float(result.stdout.split("SECONDS:")[1])
    assert (
        seconds < 2.0
    ), f"an uncached repo took {seconds:.1f} s to fail offline (total {time.perf_counter() - start:.0f} s)"
