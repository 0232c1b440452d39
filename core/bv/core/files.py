"""Writing a file so that readers see the old one or the whole new one, never a part."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Opens a temporary file beside ``path``; on a clean exit it is synced and renamed over ``path``.

    If the block raises, the temporary file is removed and ``path`` is untouched. The
    folder is created if needed. ``mode`` is ``"w"`` (text, UTF-8) or ``"wb"``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private (0600); give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> str:
    """Writes ``text`` to ``path`` atomically and returns the path."""
    with atomic_write(path) as f:
        f.write(text)
    return os.fspath(path)
