"""Where pretrained weights come from: a local folder, a Hub repo id, or a big_vision ``.npz``.

A repo id is fetched with ``huggingface_hub.snapshot_download``, which honours
``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HOME`` and the local cache. Only the
files a model folder needs are fetched (config, safetensors weights and their
index, the model card), so a repo that also ships pickle files never has them
downloaded, and no code from a repo is ever run.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import huggingface_hub
from huggingface_hub import errors as hf_errors

from bv.core.hub.npz import split_npz_path

# The files a model folder may contribute; anything else in a repo is never fetched.
ALLOWED_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors", "README.md"]
_REPO_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


class SourceError(OSError):
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
    """The local snapshot folder of ``repo_id`` at ``revision`` (from the cache when offline)."""
    offline = huggingface_hub.constants.is_offline_mode() or local_files_only
    where = f"{repo_id}" + (f" at revision {revision!r}" if revision else "")
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
        if offline:
            raise SourceError(
                f"{where} is not in the local Hub cache, and downloads are off "
                f"({'HF_HUB_OFFLINE=1' if huggingface_hub.constants.is_offline_mode() else 'local_files_only=True'}). "
                f"Fetch it once while online (e.g. `hf download {repo_id}`), point HF_HOME or cache_dir at a "
                "cache that has it, or pass a local folder instead."
            ) from e
        raise SourceError(
            f"Could not reach the Hub to fetch {where}, and it is not in the local cache. Check the network "
            f"or HF_ENDPOINT ({huggingface_hub.constants.ENDPOINT})."
        ) from e
    except hf_errors.HfHubHTTPError as e:
        raise SourceError(f"The Hub refused to serve {where}: {_status(e)}.") from e


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep in spec.replace("/", "")


def _status(e: Any) -> str:
    response = getattr(e, "response", None)
    code = getattr(response, "status_code", None)
    return f"HTTP {code}" if code else type(e).__name__
