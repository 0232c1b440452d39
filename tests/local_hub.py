"""Hugging Face Hub endpoints on 127.0.0.1 for tests that must not touch the network.

Two servers share one folder of bare git repositories laid out as ``<repos_root>/<models|datasets|spaces>/<org>/<name>``:

* Reads go through olah (third party, MIT), started by `serve_olah` as a subprocess in offline mode with the folder as
  its local mirror.  The client side is the real ``huggingface_hub``: ``snapshot_download``, ``hf_hub_download``,
  ``HfApi``.
* Writes go to `local_hub_push.serve_push_endpoint`, a small stdlib HTTP server (olah is read-only).  It answers the
  requests ``HfApi.create_repo`` and ``HfApi.upload_folder`` / ``create_commit`` make and stores each commit as a real
  git commit in the same folder, so a push followed by a pull through olah is a real round trip.

Pointing ``huggingface_hub`` at a local endpoint:

* Per call: ``snapshot_download(..., endpoint=url)``, ``hf_hub_download(..., endpoint=url)``, ``HfApi(endpoint=url)``.
  This is the reliable way and what the tests here use.
* ``HF_ENDPOINT`` is read once, at ``import huggingface_hub``, into ``huggingface_hub.constants.ENDPOINT`` and
  ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` (which ``hf_hub_download`` uses to build file URLs); the module-level
  ``HfApi`` behind ``huggingface_hub.model_info``/``upload_folder``/... copies it when it is created at import.  So
  setting ``os.environ["HF_ENDPOINT"]`` in a running process changes nothing, and patching only ``constants.ENDPOINT``
  moves new ``HfApi()`` objects but not file URLs: ``hf_hub_download``, and the downloads inside ``snapshot_download``,
  still go to huggingface.co (checked by hand).  For code that calls the Hub without an ``endpoint=`` argument
  (from_pretrained-style loaders such as timm's): set ``HF_ENDPOINT`` in the environment of a subprocess before it
  imports ``huggingface_hub``, or wrap the in-process call in `use_endpoint`, which patches all three places.

Limits of olah 0.5.4 as an offline mirror (seen in its source and checked by the tests):

* A revision that names no branch, tag or commit answers 401 ``RepoNotFound``, so ``huggingface_hub`` raises
  ``RepositoryNotFoundError`` (the URL in the message shows the revision), not ``RevisionNotFoundError``; a
  full-length sha that is not in the repo makes ``snapshot_download`` raise ``LocalEntryNotFoundError`` (the tree
  listing answers 404).  ``hf_hub_download`` with such a sha gets HTTP 500 and retries for about 20 s: avoid it.
* ``/api/models/<repo>`` without ``/revision/<rev>`` (``HfApi.model_info(repo)`` with no revision) asks the upstream
  Hub and fails offline; with ``revision="main"`` it works.
* ``HfApi.list_repo_commits`` through olah fails (its commit list lacks ``authors[].user``); use `repo_history`.
* A file missing from an existing revision answers 401 too (``RepositoryNotFoundError``, not
  ``RemoteEntryNotFoundError``).
* Files are served as regular git blobs; this push server never writes LFS pointers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

_LOG = logging.getLogger("local_hub")

BRANCH = "main"
REPO_TYPE_DIRS = {"model": "models", "dataset": "datasets", "space": "spaces"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ZERO_SHA = "0" * 40


class LocalHubError(RuntimeError):
    """A local Hub helper could not do what was asked (git failed, a server did not start, a bad argument)."""


# --------------------------------------------------------------------------------------------------------------------
# Git storage shared by both servers.


def _git_executable() -> str:
    found = shutil.which("git") or ("/usr/bin/git" if os.path.exists("/usr/bin/git") else None)
    if found is None:
        raise LocalHubError("git was not found on PATH; the local Hub stores repositories as git repositories.")
    return found


def _git(repo: Path, *args: str, stdin: bytes | None = None, env: Mapping[str, str] | None = None) -> str:
    """Runs git in `repo` with no user or system configuration, so a developer's git setup cannot interfere."""
    cmd = [_git_executable(), "-C", str(repo), "-c", "user.name=bv local hub", "-c", "user.email=local-hub@bv.invalid"]
    full_env = {
        **os.environ,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        **(env or {}),
    }
    proc = subprocess.run([*cmd, *args], input=stdin, capture_output=True, env=full_env, check=False)
    if proc.returncode != 0:
        raise LocalHubError(f"`git {' '.join(args[:2])}` failed in {repo}: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode()


def repo_path(repos_root: Path, repo_id: str, repo_type: str = "model") -> Path:
    """Where the bare git repository of `repo_id` lives under `repos_root` (olah's mirror layout)."""
    if repo_type not in REPO_TYPE_DIRS:
        raise ValueError(f"Unknown repo_type {repo_type!r}; expected one of {sorted(REPO_TYPE_DIRS)}.")
    parts = repo_id.split("/")
    if not 1 <= len(parts) <= 2 or not all(_NAME_RE.match(p) and ".." not in p for p in parts):
        raise ValueError(f"Invalid repo id {repo_id!r}; expected 'name' or 'org/name' made of letters, digits, '.-_'.")
    return Path(repos_root, REPO_TYPE_DIRS[repo_type], *parts)


def _init_bare(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=False)
    _git(path, "init", "--quiet", "--bare", f"--initial-branch={BRANCH}")


def _head(repo: Path, branch: str = BRANCH) -> str | None:
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}").strip()
    except LocalHubError:
        return None


def _list_files(repo: Path, rev: str) -> dict[str, str]:
    """Maps every file path at `rev` to its git blob sha."""
    out = _git(repo, "ls-tree", "-r", "-z", rev)
    files = {}
    for entry in filter(None, out.split("\0")):
        meta, path = entry.split("\t", 1)
        files[path] = meta.split()[2]
    return files


def _check_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..", ".git") for p in parts):
        raise ValueError(f"Invalid path in repo {path!r}; expected a relative path like 'dir/file.bin'.")
    return path


def _write_commit(
    repo: Path,
    message: str,
    *,
    add: Mapping[str, bytes],
    delete: frozenset[str] = frozenset(),
    keep_existing: bool = True,
    branch: str = BRANCH,
) -> str:
    """Commits to `branch` without a working tree, through a private index file; returns the new commit sha.

    With ``keep_existing=False`` the commit holds exactly `add` (a snapshot); otherwise `add` and `delete` edit the
    parent's tree.  The ref update fails if the branch moved while the commit was being written.
    """
    parent = _head(repo, branch)
    with tempfile.TemporaryDirectory(prefix="local-hub-index-") as tmp:
        env = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
        if parent is not None and keep_existing:
            _git(repo, "read-tree", parent, env=env)
        lines = [f"0 {_ZERO_SHA}\t{_check_path(path)}\n" for path in sorted(delete)]
        for path, data in sorted(add.items()):
            blob = _git(repo, "hash-object", "-w", "--stdin", stdin=data).strip()
            lines.append(f"100644 {blob}\t{_check_path(path)}\n")
        _git(repo, "update-index", "--add", "--replace", "--index-info", stdin="".join(lines).encode(), env=env)
        tree = _git(repo, "write-tree", env=env).strip()
    parent_args = ["-p", parent] if parent is not None else []
    commit = _git(repo, "commit-tree", tree, *parent_args, stdin=message.encode()).strip()
    _git(repo, "update-ref", f"refs/heads/{branch}", commit, parent or _ZERO_SHA)
    return commit


def _read_source(files: Mapping[str, bytes] | Path | str) -> dict[str, bytes]:
    if isinstance(files, Mapping):
        return {_check_path(path): bytes(data) for path, data in files.items()}
    root = Path(files)
    if not root.is_dir():
        raise LocalHubError(f"{root} is not a folder; pass a folder or a mapping from repo path to bytes.")
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }


def make_git_model_repo(
    repos_root: Path,
    repo_id: str,
    files: Mapping[str, bytes] | Path | str,
    *,
    repo_type: str = "model",
    message: str = "Add files",
) -> str:
    """Commits `files` (repo path -> bytes, or a folder to copy) as the whole content of `repo_id`'s main branch.

    Creates the bare git repository where olah's mirror and the push server look for it; calling it again on the same
    repo adds a new commit that replaces the content, so tests can build a history.  Returns the commit sha.
    """
    path = repo_path(repos_root, repo_id, repo_type)
    content = _read_source(files)
    if not content:
        raise LocalHubError(f"No files to commit to {repo_id!r}; got an empty mapping or folder.")
    if not path.exists():
        _init_bare(path)
    return _write_commit(path, message, add=content, keep_existing=False)


def repo_history(repos_root: Path, repo_id: str, repo_type: str = "model") -> list[tuple[str, str]]:
    """(commit sha, title) of each commit on `repo_id`'s main branch, newest first, read from git directly.

    ``HfApi.list_repo_commits`` cannot be used through olah 0.5.4: its commit list lacks ``authors[].user``.
    """
    out = _git(repo_path(repos_root, repo_id, repo_type), "log", "--format=%H %s", f"refs/heads/{BRANCH}")
    return [(line[:40], line[41:]) for line in out.splitlines()]


# --------------------------------------------------------------------------------------------------------------------
# Small process/network helpers.


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers(url: str) -> bool:
    """True once an HTTP server answers `url` at all (any status)."""
    try:
        with _NO_PROXY_OPENER.open(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@contextlib.contextmanager
def use_endpoint(url: str) -> Iterator[None]:
    """Points in-process ``huggingface_hub`` calls that take no ``endpoint=`` at `url`, and restores them after.

    Patches ``constants.ENDPOINT``, ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` and the module-level ``HfApi`` (see the
    module docstring for why all three), and sets ``HF_ENDPOINT`` for subprocesses started inside the block.
    """
    from huggingface_hub import constants, hf_api

    url = url.rstrip("/")
    saved = (
        constants.ENDPOINT,
        constants.HUGGINGFACE_CO_URL_TEMPLATE,
        hf_api.api.endpoint,
        os.environ.get("HF_ENDPOINT"),
    )
    constants.ENDPOINT = url
    constants.HUGGINGFACE_CO_URL_TEMPLATE = url + "/{repo_id}/resolve/{revision}/{filename}"
    hf_api.api.endpoint = url
    os.environ["HF_ENDPOINT"] = url
    try:
        yield
    finally:
        constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, hf_api.api.endpoint = saved[:3]
        if saved[3] is None:
            os.environ.pop("HF_ENDPOINT", None)
        else:
            os.environ["HF_ENDPOINT"] = saved[3]


# --------------------------------------------------------------------------------------------------------------------
# Reads: olah.


def _olah_config(repos_root: Path, state: Path, port: int, upstream_netloc: str) -> str:
    def q(value: str) -> str:
        return json.dumps(value)  # a JSON string is a valid TOML basic string for these paths

    return "\n".join(
        [
            "[basic]",
            f"host = {q('127.0.0.1')}",
            f"port = {port}",
            f"repos-path = {q(str(state / 'cache'))}",
            f"mirrors-path = [{q(str(Path(repos_root).resolve()))}]",
            # Anything olah still sends upstream goes to this local address, never to huggingface.co.
            f"hf-scheme = {q('http')}",
            f"hf-netloc = {q(upstream_netloc)}",
            f"hf-lfs-netloc = {q(upstream_netloc)}",
            f"mirror-netloc = {q(f'127.0.0.1:{port}')}",
            f"mirror-lfs-netloc = {q(f'127.0.0.1:{port}')}",
            "",
            "[accessibility]",
            # Offline: no start-up probe of the Hub, no visibility checks, local mirrors only.
            "offline = true",
            "",
        ]
    )


@contextlib.contextmanager
def serve_olah(
    repos_root: Path,
    port: int | None = None,
    *,
    upstream_netloc: str = "127.0.0.1:9",
    startup_timeout: float = 60.0,
) -> Iterator[str]:
    """Runs olah as an offline read-only Hub mirror of the git repos under `repos_root`; yields its URL.

    olah runs in its own process group on 127.0.0.1 (a free port unless `port` is given) and is killed with its group
    on exit.  `upstream_netloc` is where olah would send any request to "the Hub"; it defaults to the discard port on
    127.0.0.1, and a test can point it at a listener to prove nothing goes upstream.
    """
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="local-hub-olah-") as tmp:
        state = Path(tmp)
        config = state / "olah.toml"
        config.write_text(_olah_config(Path(repos_root), state, port, upstream_netloc))
        env = {
            **os.environ,
            # The child sees exactly the modules this process sees (a venv, or a Pants/pex sandbox).
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            "GIT_PYTHON_GIT_EXECUTABLE": _git_executable(),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "NO_PROXY": "*",
            "no_proxy": "*",
        }
        log_path = state / "olah.out"
        cmd = [sys.executable, "-m", "olah.server", "--config", str(config), "--log-path", str(state / "logs")]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=state, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            deadline = time.monotonic() + startup_timeout
            # A repo-info request for a repo that is not there: answered locally (olah's index page is broken).
            while not _answers(url + "/api/models/local-hub/not-a-repo/revision/main"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    why = f"exited with code {proc.returncode}" if proc.returncode is not None else "did not answer"
                    raise LocalHubError(f"olah {why} on {url} within {startup_timeout:.0f} s. Its output:\n{tail}")
                time.sleep(0.1)
            yield url
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
    # The leader may be gone while children of its group live on.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
