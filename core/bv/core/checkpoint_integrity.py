"""Checksums of a checkpoint's files, so that a flipped bit or a cut file is found before it is loaded.

When every process has written its shards, and before the folder is renamed into
place, the primary process hashes each file under the checkpoint's items (sha256)
and writes ``checksums.json`` beside them. A restore verifies the files of the
items it reads (a ``load_params`` only those of ``params``) and refuses a
checkpoint whose files differ in size or content, or are missing.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable

from bv.core.errors import UserError

CHECKSUMS_FILE = "checksums.json"
_ALGORITHM = "sha256"


class ChecksumError(UserError, ValueError):
    """A checkpoint file is missing, has another size, or another content than when it was written."""


def _files_under(folder: str, tops: Iterable[str]) -> list[str]:
    """Relative paths of the files under ``folder/<top>/`` for each top, sorted."""
    out: list[str] = []
    for top in tops:
        for root, _, files in os.walk(os.path.join(folder, top)):
            out.extend(os.path.relpath(os.path.join(root, name), folder) for name in files)
    return sorted(out)


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, _ALGORITHM).hexdigest()


def write_checksums(folder: str) -> None:
    """Hashes every file in the item folders of ``folder`` and writes ``folder/checksums.json``."""
    tops = [name for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name))]
    files = {
        rel: {"size": os.path.getsize(os.path.join(folder, rel)), _ALGORITHM: _digest(os.path.join(folder, rel))}
        for rel in _files_under(folder, tops)
    }
    tmp = os.path.join(folder, f".{CHECKSUMS_FILE}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"algorithm": _ALGORITHM, "files": files}, f, indent=0)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(folder, CHECKSUMS_FILE))


def has_checksums(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, CHECKSUMS_FILE))


def verify(folder: str, tops: Iterable[str]) -> None:
    """Raises :class:`ChecksumError` naming the first file under ``tops`` that is not as written."""
    try:
        with open(os.path.join(folder, CHECKSUMS_FILE), encoding="utf-8") as f:
            recorded = json.load(f)["files"]
    except FileNotFoundError:
        raise ChecksumError(f"{CHECKSUMS_FILE} is missing, so the files cannot be verified") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ChecksumError(f"{CHECKSUMS_FILE} is damaged ({e})") from None
    prefixes = tuple(f"{top}/" for top in tops)
    wanted = {rel: rec for rel, rec in recorded.items() if rel.startswith(prefixes)}
    for rel, rec in sorted(wanted.items()):
        path = os.path.join(folder, rel)
        if not os.path.isfile(path):
            raise ChecksumError(f"{rel} is missing")
        size = os.path.getsize(path)
        if size != rec["size"]:
            raise ChecksumError(f"{rel} has {size} bytes, {rec['size']} when written (truncated or overwritten)")
        if _digest(path) != rec[_ALGORITHM]:
            raise ChecksumError(f"{rel} has changed since it was written ({_ALGORITHM} differs: corrupted)")
