"""Where pretrained weights come from: a local folder, a Hub repo id, or a big_vision ``.npz``.

A repo id is fetched with ``huggingface_hub.snapshot_download``, which honours
``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HOME`` and the local cache. Only the
files a model folder needs are fetched (config, safetensors weights and their
index, the model card), so a repo that also ships pickle files never has them
downloaded, and no code from a repo is ever run.

An interrupted download (see `download`) is retried a bounded number of times; when it keeps failing the
user gets a `SourceError` that names the repo and says what to do, never an httpx traceback as the message.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import time
from typing import Any

import huggingface_hub
from huggingface_hub import errors as hf_errors

from bv.core.errors import UserError

from bv.core.hub.npz import split_npz_path

# The files a model folder may contribute; anything else in a repo is never fetched.
ALLOWED_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors", "README.md"]
_REPO_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")

log = logging.getLogger(__name__)

# What huggingface_hub does with an interrupted download (read in huggingface_hub 2.4.0,
# file_download.py: `http_get`, `_download_to_tmp_and_move`; checked by tests/hub_download_faults_test.py):
# * `http_get` retries httpx2 ConnectError, TimeoutException and RemoteProtocolError (a connection closed
#   cleanly before Content-Length bytes came) by itself: 5 retries, 1 s apart, the count reset whenever a chunk
#   was written, then it re-raises the httpx2 error. The retry sends a Range header from the bytes already written,
#   but httpx's `iter_bytes(chunk_size=10 MB)` drops a partial chunk when the stream breaks, so a file under
#   10 MB (and the tail of any file) starts over rather than resumes.
# * It does not retry anything else: a connection reset (ReadError, "Connection reset by peer"), a WriteError,
#   or the OSError "Consistency check failed" (a body shorter than announced without an HTTP error) fails the
#   whole `snapshot_download` at once.
# * Each download writes to a process-unique `<etag>.<8 hex>.incomplete` file that is deleted on failure and
#   renamed to the blob only when complete, so a broken download never leaves a file the cache takes as
#   complete; a leftover `.incomplete` from a killed process is never resumed from or trusted (and not removed).
#   Files already complete stay in the cache, so a re-run fetches only what is missing.
# So bv retries only what huggingface_hub gave up on at once (below), and turns any give-up into a SourceError.
_ATTEMPTS = 3  # calls of snapshot_download for an interruption that huggingface_hub did not retry itself
_BACKOFF_S = (1.0, 2.0)  # the wait before the 2nd and the 3rd call
_HF_RETRIED = ("ConnectError", "TimeoutException", "RemoteProtocolError")  # retried inside `http_get`


class SourceError(UserError, OSError):
    """A pretrained source that cannot be found or fetched; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Source:
    """A resolved source: ``kind`` is ``"folder"`` (local, possibly from the Hub cache) or ``"npz"``."""

    kind: str
    path: str
    subtree: str | None = None  # for npz: the prefix inside the file, e.g. "params/img"
    repo_id: str | None = None
    revision: str | None = None


def is_npz_spec(spec: str) -> bool:
    return split_npz_path(spec)[0].endswith(".npz")


def resolve(
    source: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Source:
    """Turns a user's ``source`` into local files, downloading a Hub repo's model files if needed."""
    spec = os.fspath(source)
    if is_npz_spec(spec):
        path, subtree = split_npz_path(spec)
        if not os.path.isfile(path):
            raise SourceError(f"The big_vision checkpoint {path!r} does not exist.")
        return Source("npz", path, subtree=subtree)
    if os.path.isdir(spec):
        if revision is not None:
            raise SourceError(f"revision={revision!r} was given, but {spec!r} is a local folder, not a Hub repo.")
        return Source("folder", spec)
    if _looks_like_path(spec) or not _REPO_ID_RE.fullmatch(spec):
        raise SourceError(
            f"{spec!r} is neither an existing folder, a .npz file nor a Hub repo id. Expected a local model folder, "
            "a repo id such as 'org/name', or a big_vision checkpoint 'file.npz' (optionally 'file.npz:subtree')."
        )
    return Source(
        "folder",
        download(
            spec,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        ),
        repo_id=spec,
        revision=revision,
    )


def download(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> str:
    """The local snapshot folder of ``repo_id`` at ``revision`` (from the cache when offline).

    A download interrupted in a way huggingface_hub does not retry itself (a connection reset, a short
    body) is tried again, up to 3 calls in all, 1 s then 2 s apart, each logged as a warning naming the
    repo; files already complete stay in the cache. One that keeps failing raises a `SourceError`.
    """
    where = f"{repo_id}" + (f" at revision {revision!r}" if revision else "")
    attempt = 1
    while True:
        try:
            return _download_once(
                repo_id,
                where,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                local_files_only=local_files_only,
                token=token,
            )
        except Exception as e:
            kind = _interruption(e)
            if kind is None:
                raise
            if kind == "retry" and attempt < _ATTEMPTS:
                wait = _BACKOFF_S[attempt - 1]
                log.warning(
                    "Downloading %s from the Hub was interrupted (%s); trying again in %.0f s (attempt %d of %d).",
                    where,
                    _reason(e),
                    wait,
                    attempt + 1,
                    _ATTEMPTS,
                )
                time.sleep(wait)
                attempt += 1
                continue
            tries = "after huggingface_hub's own retries" if kind == "hf_retried" else f"{attempt} tries"
            raise SourceError(
                f"Downloading the Hub repo {where} was interrupted repeatedly ({tries}; last: {_reason(e)}). "
                "No partly downloaded file was kept in the cache. Run it again: files already downloaded are "
                "kept, so a re-run resumes with the rest. If it keeps failing, check the network, a proxy, "
                f"or HF_ENDPOINT ({huggingface_hub.constants.ENDPOINT})."
            ) from e


def _download_once(
    repo_id: str,
    where: str,
    *,
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None,
    force_download: bool,
    local_files_only: bool,
    token: str | bool | None,
) -> str:
    """One ``snapshot_download``, with the Hub's answers turned into `SourceError`s (interruptions pass through)."""
    offline = huggingface_hub.constants.is_offline_mode() or local_files_only
    try:
        return str(
            huggingface_hub.snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
                force_download=force_download,
                local_files_only=local_files_only,
                token=token,
                allow_patterns=ALLOWED_FILES,
                library_name="bv",
            )
        )
    except hf_errors.RevisionNotFoundError as e:
        raise SourceError(
            f"The Hub repo {repo_id} has no revision {revision!r}. Pass a branch, a tag or a full commit hash "
            "that exists in the repo (or no revision for 'main')."
        ) from e
    except hf_errors.RepositoryNotFoundError as e:
        at = f" at revision {revision!r}" if revision else ""
        raise SourceError(
            f"The Hub repo {repo_id!r} was not found{at}: it does not exist{', has no such revision' if at else ''}, "
            "or it is private or gated and no valid token was given (pass token=..., or `hf auth login`)."
        ) from e
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled) as e:
        # IncompleteSnapshotError (huggingface_hub >= 2): the snapshot folder exists but its cached file list
        # shows files missing, e.g. after an interrupted download.
        partly = isinstance(e, getattr(hf_errors, "IncompleteSnapshotError", ()))
        state = (
            "is only partly in the local Hub cache (an earlier download of it was interrupted)"
            if partly
            else "is not in the local Hub cache"
        )
        if offline:
            raise SourceError(
                f"{where} {state}, and downloads are off "
                f"({'HF_HUB_OFFLINE=1' if huggingface_hub.constants.is_offline_mode() else 'local_files_only=True'}). "
                f"Fetch it once while online (e.g. `hf download {repo_id}`), point HF_HOME or cache_dir at a "
                "cache that has it, or pass a local folder instead."
            ) from e
        raise SourceError(
            f"Could not reach the Hub to fetch {where}, and it {state.removeprefix('is ')}. Check the network "
            f"or HF_ENDPOINT ({huggingface_hub.constants.ENDPOINT})."
        ) from e
    except hf_errors.HfHubHTTPError as e:
        raise SourceError(f"The Hub refused to serve {where}: {_status(e)}.") from e


def _interruption(e: BaseException) -> str | None:
    """How `download` treats ``e``: ``"retry"``, ``"hf_retried"`` (give up now), or None (not an interruption).

    The transport errors are httpx2's (huggingface_hub 2.x) or httpx's (1.x); both are looked up among the
    modules huggingface_hub has imported, so bv depends on neither.
    """
    if isinstance(e, UserError):
        return None
    for name in ("httpx2", "httpx"):
        module = sys.modules.get(name)
        if module is not None and isinstance(e, module.TransportError):
            return "hf_retried" if isinstance(e, tuple(getattr(module, n) for n in _HF_RETRIED)) else "retry"
    if type(e) is OSError and str(e).startswith("Consistency check failed"):
        return "retry"
    return None


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep in spec.replace("/", "")


def _status(e: Any) -> str:
    response = getattr(e, "response", None)
    code = getattr(response, "status_code", None)
    return f"HTTP {code}" if code else type(e).__name__
