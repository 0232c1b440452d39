"""A minimal Hugging Face Hub write API on 127.0.0.1: what ``HfApi.create_repo`` and ``upload_folder`` call.

Each commit becomes a real git commit in the bare repositories of ``local_hub`` (under
``<repos_root>/<models|datasets|spaces>/<org>/<name>``), where olah serves them for reads,
so a push followed by a pull is a real round trip. See ``local_hub`` for the read side.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import http.server
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from local_hub import (
    _LOG,
    BRANCH,
    LocalHubError,
    REPO_TYPE_DIRS,
    _git,
    _head,
    _init_bare,
    _list_files,
    _write_commit,
    repo_path,
)

_TYPES = "|".join(REPO_TYPE_DIRS.values())
_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
    ("POST", re.compile(rf"^/api/(?P<type_dir>{_TYPES})/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/(?P<type_dir>{_TYPES})/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("GET", re.compile(rf"^/api/(?P<type_dir>{_TYPES})/(?P<repo>.+?)/revision/(?P<rev>[^/]+)$"), "repo_info"),
    ("GET", re.compile(rf"^/api/(?P<type_dir>{_TYPES})/{_REPO}$"), "repo_info"),
]
_SINGULAR = {v: k for k, v in REPO_TYPE_DIRS.items()}


class _HubError(Exception):
    """An error answer in the Hub's format: status, ``X-Error-Code`` (read by huggingface_hub) and a message."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class _PushServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, repos_root: Path, token: str | None) -> None:
        super().__init__(("127.0.0.1", 0), _PushHandler)
        self.repos_root = Path(repos_root)
        self.token = token
        self.lock = threading.Lock()  # one writer at a time, like a branch ref on the Hub

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _PushHandler(http.server.BaseHTTPRequestHandler):
    server: _PushServer
    protocol_version = "HTTP/1.1"
    query: dict[str, list[str]]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
        # Only the request line and status reach the log: never headers, so never the token.
        _LOG.debug("push server: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    # -- plumbing --------------------------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        split = urllib.parse.urlsplit(self.path)
        self.query = urllib.parse.parse_qs(split.query)
        try:
            body = self._read_body()
            for route_method, pattern, name in _ROUTES:
                match = pattern.match(split.path)
                if match and (route_method == method or (method == "HEAD" and route_method == "GET")):
                    self._check_auth()
                    params = {k: urllib.parse.unquote(v) for k, v in match.groupdict().items()}
                    status, payload = getattr(self, "_" + name)(body=body, **params)
                    self._send(status, payload, head_only=method == "HEAD")
                    return
            known = ", ".join(sorted({f"{m} {n}" for m, _, n in _ROUTES}))
            raise _HubError(404, f"The local push server has no {method} {split.path}; it answers: {known}.")
        except _HubError as err:
            # Header values must be latin-1; escape anything else (a non-ASCII file name, say).
            headers = {"X-Error-Message": err.message.splitlines()[0].encode("ascii", "backslashreplace").decode()}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._send(err.status, {"error": err.message, **err.extra}, headers=headers, head_only=method == "HEAD")
        except Exception as err:  # noqa: BLE001 (answer 500 rather than drop the connection)
            _LOG.exception("push server failed on %s %s", method, split.path)
            self._send(500, {"error": f"local push server error: {err}"}, head_only=method == "HEAD")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(
        self, status: int, payload: Any, headers: Mapping[str, str] | None = None, head_only: bool = False
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head_only:
            self.wfile.write(data)

    def _check_auth(self) -> None:
        if self.server.token is None:
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.server.token}".encode()):
            raise _HubError(401, "Invalid credentials in Authorization header")

    def _json(self, body: bytes) -> Any:
        try:
            return json.loads(body or b"{}")
        except ValueError as err:
            raise _HubError(400, f"Request body is not JSON: {err}") from err

    def _repo(self, repo_type_dir: str, repo_id: str, must_exist: bool = True) -> Path:
        try:
            path = repo_path(self.server.repos_root, repo_id, _SINGULAR[repo_type_dir])
        except ValueError as err:
            raise _HubError(400, str(err)) from err
        if must_exist and not path.exists():
            raise _HubError(404, f"Repository {repo_id!r} ({repo_type_dir}) not found", "RepoNotFound")
        return path

    def _branch_head(self, path: Path, rev: str) -> str:
        head = _head(path, rev)
        if head is None:
            raise _HubError(
                404, f"Invalid rev id: {rev} (the local push server commits to existing branches)", "RevisionNotFound"
            )
        return head

    def _web_url(self, repo_type_dir: str, repo_id: str) -> str:
        prefix = "" if repo_type_dir == "models" else repo_type_dir + "/"
        return f"{self.server.url}/{prefix}{repo_id}"

    # -- endpoints ---------------------------------------------------------------------------------------------------

    def _create_repo(self, body: bytes) -> tuple[int, Any]:
        request = self._json(body)
        name, org = request.get("name"), request.get("organization")
        repo_type = request.get("type") or "model"
        if not isinstance(name, str) or repo_type not in REPO_TYPE_DIRS:
            raise _HubError(400, f"create needs a 'name' and a 'type' in {sorted(REPO_TYPE_DIRS)}; got {request}")
        repo_id = f"{org}/{name}" if org else name
        type_dir = REPO_TYPE_DIRS[repo_type]
        path = self._repo(type_dir, repo_id, must_exist=False)
        url = self._web_url(type_dir, repo_id)
        with self.server.lock:
            if path.exists():
                # The Hub's 409 carries the repo URL; create_repo(exist_ok=True) returns it.
                raise _HubError(409, f"You already created this {repo_type} repo: {repo_id}", url=url)
            _init_bare(path)
            attributes = b"# Files here are regular git blobs (bv's local test Hub stores no LFS objects).\n"
            _write_commit(path, "initial commit", add={".gitattributes": attributes})
        return 200, {"url": url, "name": repo_id, "id": repo_id}

    def _validate_yaml(self, body: bytes) -> tuple[int, Any]:
        request = self._json(body)
        content = request.get("content")
        if not isinstance(content, str):
            raise _HubError(400, "validate-yaml needs a string 'content' (the README.md text)")
        # Metadata is not checked here: only that a front matter that opens with '---' also closes.
        if content.startswith("---") and "\n---" not in content[3:]:
            return 400, {"errors": [{"message": "README.md metadata opens with '---' but never closes"}]}
        return 200, {"errors": [], "warnings": []}

    def _whoami(self, body: bytes) -> tuple[int, Any]:
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            raise _HubError(401, "Invalid credentials in Authorization header")
        return 200, {
            "type": "user",
            "name": "local-user",
            "fullname": "Local Test User",
            "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
        }

    def _repo_info(self, body: bytes, type_dir: str, repo: str, rev: str | None = None) -> tuple[int, Any]:
        path = self._repo(type_dir, repo)
        if rev is not None and re.fullmatch(r"[0-9a-f]{40}", rev):
            sha = rev
        else:
            sha = self._branch_head(path, rev or BRANCH)
        try:
            files = _list_files(path, sha)
            date_format = "--date=format-local:%Y-%m-%dT%H:%M:%S.000Z"  # the Hub's form, which the client parses
            date = _git(path, "log", "-1", "--format=%cd", date_format, sha, env={"TZ": "UTC"}).strip()
        except LocalHubError as err:
            raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound") from err
        return 200, {
            "id": repo,
            "author": repo.split("/")[0] if "/" in repo else None,
            "sha": sha,
            "lastModified": date,
            "private": False,
            "siblings": [{"rfilename": p} for p in sorted(files)],
        }

    def _preupload(self, body: bytes, type_dir: str, repo: str, rev: str) -> tuple[int, Any]:
        path = self._repo(type_dir, repo)
        if "create_pr" in self.query:
            raise _HubError(400, "The local push server does not support pull requests (create_pr).")
        existing = _list_files(path, self._branch_head(path, rev))
        files = self._json(body).get("files", [])
        # "regular" for every file: the client then sends contents base64-encoded in the commit, with no LFS upload.
        return 200, {
            "files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": existing.get(f["path"])}
                for f in files
            ]
        }

    def _commit(self, body: bytes, type_dir: str, repo: str, rev: str) -> tuple[int, Any]:
        path = self._repo(type_dir, repo)
        if "create_pr" in self.query:
            raise _HubError(400, "The local push server does not support pull requests (create_pr).")
        summary, description, parent = "", "", None
        add: dict[str, bytes] = {}
        delete_files: list[str] = []
        delete_folders: list[str] = []
        for line in filter(None, (raw.strip() for raw in body.split(b"\n"))):
            item = self._json(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                summary, description = value.get("summary", ""), value.get("description", "")
                parent = value.get("parentCommit")
            elif key == "file":
                content = value.get("content", "")
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                add[value["path"]] = data
            elif key == "deletedFile":
                delete_files.append(value["path"])
            elif key == "deletedFolder":
                delete_folders.append(value["path"].rstrip("/"))
            elif key == "lfsFile":
                raise _HubError(
                    400,
                    f"LFS file {value.get('path')!r} in commit: the local push server stores regular "
                    "files only (its preupload answers uploadMode 'regular').",
                )
            else:
                raise _HubError(
                    400, f"Unknown commit operation {key!r}; expected header, file, deletedFile, deletedFolder."
                )
        if not summary:
            raise _HubError(400, "The commit has no summary (header.summary is empty).")
        with self.server.lock:
            head = self._branch_head(path, rev)
            if parent is not None and parent != head:
                raise _HubError(
                    412,
                    f"A commit has happened since {parent}; {rev} is now at {head}. Please refresh and try again.",
                )
            existing = _list_files(path, head)
            missing = [p for p in delete_files if p not in existing]
            if missing:
                raise _HubError(404, f"A file with this name doesn't exist: {missing[0]}", "EntryNotFound")
            delete = set(delete_files)
            for folder in delete_folders:
                inside = {p for p in existing if p.startswith(folder + "/")}
                if not inside:
                    raise _HubError(404, f"A folder with this name doesn't exist: {folder}", "EntryNotFound")
                delete |= inside
            message = summary + (f"\n\n{description}" if description else "") + "\n"
            try:
                sha = _write_commit(path, message, add=add, delete=frozenset(delete - set(add)), branch=rev)
            except ValueError as err:
                raise _HubError(400, str(err)) from err
        commit_url = f"{self._web_url(type_dir, repo)}/commit/{sha}"
        return 200, {
            "success": True,
            "commitOid": sha,
            "commitUrl": commit_url,
            "hookOutput": "",
            "pullRequestUrl": None,
        }


@contextlib.contextmanager
def serve_push_endpoint(repos_root: Path, token: str | None = None) -> Iterator[str]:
    """Serves the Hub write API (create repo, preupload, commit, whoami, repo info) on 127.0.0.1; yields its URL.

    Repositories and commits land as bare git repos under `repos_root`, where `serve_olah` serves them.  With a
    `token`, every request must carry ``Authorization: Bearer <token>`` or gets 401; the token is never logged.
    Runs in a daemon thread of this process and stops on exit.
    """
    server = _PushServer(Path(repos_root), token)
    thread = threading.Thread(target=server.serve_forever, name="local-hub-push", daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
