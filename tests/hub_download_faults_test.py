"""Interrupted Hub downloads: a fault-injecting HTTP front between huggingface_hub and the local Hub (olah).

The front relays every request to olah, except the GETs of ``model.safetensors``, which it serves itself like the
Hub's CDN (a Content-Length for the whole body, a Range answered with 206) and can break on purpose: after part of
the body it closes the connection cleanly (``"fin"``: httpx raises RemoteProtocolError), resets it (``"reset"``:
ReadError, "Connection reset by peer"), or holds it open until released (``"stall"``). olah itself streams files
chunked and ignores Range, so it cannot be the one that breaks.

What huggingface_hub 2.4.0 does with each (see the comment in bv/core/hub/source.py): it retries a "fin" by itself
(5 times, 1 s apart), not a "reset"; bv retries what it did not, and turns a give-up into a clear SourceError.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import local_hub
import numpy as np
import pytest

from bv.core.hub import SourceError
from bv.vit import ViT

WEIGHTS = "model.safetensors"
CUT_AT = 60_000  # bytes of the weights' body (152,932 bytes for mu/16) sent before a fault


class FaultyFront:
    """An HTTP server on 127.0.0.1 in front of olah at `upstream` that breaks downloads of ``model.safetensors``.

    ``plan(n)`` says what to do to the ``n``-th GET of the weights (0-based): None (serve it whole) or
    ``(mode, offset)``: send the headers with the full Content-Length, then the body up to absolute byte `offset` of
    the file (nothing for a Range that starts there or later), then ``"fin"``, ``"reset"`` or ``"stall"``.
    """

    def __init__(self, upstream: str, plan: Callable[[int], tuple[str, int] | None]) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.plan = plan
        self.gets: list[str | None] = []  # the Range header of each GET of the weights
        self.stalled = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def next_get(self, range_header: str | None) -> int:
        with self._lock:
            self.gets.append(range_header)
            return len(self.gets) - 1


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_HEAD(self) -> None:
        self._relay()

    def do_GET(self) -> None:
        self._relay()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass

    def _relay(self) -> None:
        front = self.server.front
        conn = http.client.HTTPConnection(*front.upstream, timeout=30)
        skip = {"host", "range", "connection", "accept-encoding"}
        conn.request(self.command, self.path, headers={k: v for k, v in self.headers.items() if k.lower() not in skip})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        keep = [(k, v) for k, v in resp.getheaders() if k.lower() not in ("transfer-encoding", "content-length")]
        if self.command == "HEAD" or resp.status != 200 or not self.path.split("?")[0].endswith("/" + WEIGHTS):
            self.send_response(resp.status)
            for k, v in keep:
                self.send_header(k, v)
            length = resp.getheader("content-length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return
        range_header = self.headers.get("Range")
        start = int(range_header.removeprefix("bytes=").split("-")[0]) if range_header else 0
        fault = front.plan(front.next_get(range_header))
        self.send_response(206 if start else 200)
        for k, v in keep:
            self.send_header(k, v)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if fault is None:
            self.wfile.write(body[start:])
            return
        mode, offset = fault
        self.wfile.write(body[start : max(start, offset)])
        self.wfile.flush()
        self.close_connection = True
        if mode == "stall":
            front.stalled.set()
            front.release.wait(60)
        elif mode == "reset":  # SO_LINGER 0: close() sends RST instead of FIN
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    front: FaultyFront


@contextlib.contextmanager
def serve_front(upstream: str, plan: Callable[[int], tuple[str, int] | None]) -> Iterator[tuple[str, FaultyFront]]:
    """Runs a `FaultyFront` before olah at `upstream`; yields its URL and the front (to read what it saw)."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.front = FaultyFront(upstream, plan)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.front
    finally:
        server.front.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, ViT, bytes]]:
    """olah over a folder of repos, a small ViT, and its saved weights file."""
    root = tmp_path_factory.mktemp("faults")
    model = ViT.create(variant="mu/16", num_classes=3, resolution=32, head_zeroinit=False, seed=1)
    model.save_pretrained(root / "saved")
    assert (root / "saved" / WEIGHTS).stat().st_size > CUT_AT * 2
    with local_hub.serve_olah(root / "repos") as url:
        yield root / "repos", url, model, (root / "saved" / WEIGHTS).read_bytes()


def _saved(hub: Any, tmp_path: Path) -> Path:
    _, _, model, _ = hub
    folder = tmp_path / "saved"
    if not folder.exists():
        model.save_pretrained(folder)
    return folder


def _assert_loaded_bitwise(hub: Any, loaded: ViT, cache: Path) -> None:
    _, _, model, weights = hub
    assert str(jax.tree.structure(loaded.params)) == str(jax.tree.structure(model.params))
    for x, y in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(model.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    (snapshot_file,) = cache.glob(f"models--org--*/snapshots/*/{WEIGHTS}")
    assert hashlib.sha256(snapshot_file.read_bytes()).digest() == hashlib.sha256(weights).digest()


def _blobs(cache: Path) -> list[Path]:
    return sorted(p for p in cache.glob("models--org--*/blobs/*"))


@pytest.mark.parametrize("mode", ["fin", "reset"])
def test_a_download_cut_once_is_retried_and_loads_bitwise(
    hub: Any, tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    repos, olah, _, _ = hub
    repo_id = f"org/cut-once-{mode}"
    local_hub.make_git_model_repo(repos, repo_id, _saved(hub, tmp_path))
    cache = tmp_path / "cache"
    caplog.set_level(logging.WARNING)
    with serve_front(olah, lambda n: (mode, CUT_AT) if n == 0 else None) as (url, front):
        with local_hub.use_endpoint(url):
            start = time.perf_counter()
            loaded = ViT.from_pretrained(repo_id, cache_dir=cache)
            seconds = time.perf_counter() - start
    assert len(front.gets) == 2, front.gets  # the cut GET, then one more that completed
    _assert_loaded_bitwise(hub, loaded, cache)
    assert not list(cache.rglob("*.incomplete"))
    if mode == "fin":  # huggingface_hub's own retry, logged by it (with the file's URL)
        assert "Trying to resume download" in caplog.text and repo_id in caplog.text
    else:  # huggingface_hub gives up on a reset at once; bv's retry, logged naming the repo
        bv_warnings = [r.getMessage() for r in caplog.records if r.name == "bv.core.hub.source"]
        assert len(bv_warnings) == 1 and repo_id in bv_warnings[0], bv_warnings
        assert "Connection reset" in bv_warnings[0] and "attempt 2 of 3" in bv_warnings[0]
    assert seconds < 20, f"{seconds:.1f} s"


@pytest.mark.parametrize("mode", ["fin", "reset"])
def test_a_download_that_always_breaks_fails_clearly_and_leaves_no_partial_file(
    hub: Any, tmp_path: Path, mode: str
) -> None:
    repos, olah, _, _ = hub
    repo_id = f"org/always-{mode}"
    local_hub.make_git_model_repo(repos, repo_id, _saved(hub, tmp_path))
    cache = tmp_path / "cache"
    # Every GET breaks at the same byte of the file, so no retry ever gets past it (a Range from there gets nothing).
    with serve_front(olah, lambda n: (mode, CUT_AT)) as (url, front):
        with local_hub.use_endpoint(url):
            start = time.perf_counter()
            with pytest.raises(SourceError) as info:
                ViT.from_pretrained(repo_id, cache_dir=cache)
            seconds = time.perf_counter() - start
    message = str(info.value)
    assert "interrupted repeatedly" in message and repo_id in message, message
    assert "Run it again" in message and "resumes" in message and "check the network" in message, message
    assert "httpx" not in message and "Traceback" not in message and "\n" not in message, message
    if mode == "fin":  # huggingface_hub tried 6 times (5 retries, 1 s apart); bv adds none
        assert len(front.gets) == 6 and "huggingface_hub's own retries" in message, (front.gets, message)
    else:  # huggingface_hub tried once per call; bv called it 3 times, 1 s then 2 s apart
        assert len(front.gets) == 3 and "3 tries" in message and "Connection reset" in message, (front.gets, message)
    assert seconds < 20, f"{seconds:.1f} s"

    # Nothing in the cache passes for the weights: no blob but the small files, no partial file, no snapshot link.
    assert not list(cache.rglob("*.incomplete"))
    assert not list(cache.glob(f"models--org--*/snapshots/*/{WEIGHTS}"))
    small = [p.read_bytes() for p in (tmp_path / "saved").iterdir() if p.name != WEIGHTS]
    assert all(p.read_bytes() in small for p in _blobs(cache))
    # ... so an offline load does not take the partial snapshot for a complete one.
    with pytest.raises(SourceError, match="only partly in the local Hub cache.*local_files_only=True"):
        ViT.from_pretrained(repo_id, cache_dir=cache, local_files_only=True)

    # Once the network is back, the same call completes the snapshot.
    with serve_front(olah, lambda n: None) as (url, front):
        with local_hub.use_endpoint(url):
            loaded = ViT.from_pretrained(repo_id, cache_dir=cache)
    assert front.gets == [None]
    _assert_loaded_bitwise(hub, loaded, cache)


def test_a_leftover_incomplete_file_from_a_killed_download_is_not_trusted(hub: Any, tmp_path: Path) -> None:
    repos, olah, _, weights = hub
    repo_id = "org/killed"
    local_hub.make_git_model_repo(repos, repo_id, _saved(hub, tmp_path))
    cache = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import huggingface_hub
        huggingface_hub.snapshot_download({repo_id!r}, cache_dir={str(cache)!r}, endpoint=URL)
        """
    )
    # olah serves git blobs: a file's ETag, and so its blob's name in the cache, is its git blob id.
    etag = hashlib.sha1(b"blob %d\0" % len(weights) + weights).hexdigest()
    with serve_front(olah, lambda n: ("stall", CUT_AT) if n == 0 else None) as (url, front):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "NO_PROXY": "*"}
        proc = subprocess.Popen([sys.executable, "-c", f"URL = {url!r}\n{script}"], env=env, start_new_session=True)
        try:
            assert front.stalled.wait(60), "the download in the subprocess never reached the weights"
            deadline = time.monotonic() + 10
            while not list(cache.rglob(f"{etag}.*.incomplete")) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        front.release.set()
        # What the killed process left: <etag>.<8 hex>.incomplete (maybe also one of a small file it was fetching).
        (leftover,) = cache.rglob(f"{etag}.*.incomplete")
        assert not (leftover.parent / etag).exists()
        # And the fixed name older huggingface_hub versions resumed from, holding wrong bytes: resuming from it
        # would corrupt the weights.
        (leftover.parent / f"{etag}.incomplete").write_bytes(b"\0" * CUT_AT)

        with local_hub.use_endpoint(url):
            loaded = ViT.from_pretrained(repo_id, cache_dir=cache)
        assert front.gets[1:] == [None]  # downloaded whole, from byte 0
    _assert_loaded_bitwise(hub, loaded, cache)
    assert (leftover.parent / etag).read_bytes() == weights
