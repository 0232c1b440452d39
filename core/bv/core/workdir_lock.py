"""One run per workdir: a lock that a second ``bv-train`` on the same workdir is refused by.

The lock is an advisory ``flock`` on ``WORKDIR/.bv-train.lock``, which also records
who holds it (pid, host, start time). The kernel drops the lock when its
process dies, however it dies (SIGKILL, out of memory, a lost machine's NFS lease),
so a lock left by a killed run is simply taken over; the record of the dead holder
is logged. Only the first process of a multi-process run takes it.

A run leaves no trace of the lock: on exit the lock file is removed, and so is the
workdir if the lock created it and nothing else was written (a run refused for a
bad config must not leave an empty folder behind).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from typing import IO, Iterator

from bv.core.errors import UserError

LOCK_FILE = ".bv-train.lock"

log = logging.getLogger("bv.train")


class WorkdirLockedError(UserError, RuntimeError):
    """Another live run holds the workdir."""


class WorkdirUnusableError(UserError, OSError):
    """The workdir cannot be created or written (a file, read-only, no permission)."""


def _open_lock_file(workdir: str) -> tuple[IO[str], bool]:
    """Opens (creating) the lock file; also says whether the workdir had to be created."""
    try:
        if os.path.exists(workdir) and not os.path.isdir(workdir):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", workdir)
        created = not os.path.exists(workdir)
        os.makedirs(workdir, exist_ok=True)
        return open(os.path.join(workdir, LOCK_FILE), "a+", encoding="utf-8"), created
    except OSError as e:
        reason = {
            errno.ENOTDIR: "it (or a folder above it) is a file, not a folder",
            errno.EACCES: "permission denied",
            errno.EPERM: "permission denied",
            errno.EROFS: "it is on a read-only file system",
            errno.ENOSPC: "the disk is full",
        }.get(e.errno or 0, e.strerror or str(e))
        raise WorkdirUnusableError(
            f"The workdir {workdir!r} cannot be used: {reason}. Pass a --workdir that is a folder you can write to "
            "(it is created if it does not exist)."
        ) from None


def _is_current(f: IO[str], path: str) -> bool:
    """False if ``path`` was removed (or replaced) by a holder that exited after we opened it."""
    try:
        return os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
        return False


def _remove_traces(workdir: str, created: bool) -> None:
    with contextlib.suppress(OSError):
        os.remove(os.path.join(workdir, LOCK_FILE))
    if created:
        with contextlib.suppress(OSError):  # not empty: the run wrote something, keep it
            os.rmdir(workdir)


def _read_holder(f: IO[str]) -> dict:
    f.seek(0)
    try:
        holder = json.loads(f.read() or "{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "a process that left no record"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')!r}, started {started}"


@contextlib.contextmanager
def hold(workdir: str | None) -> Iterator[None]:
    """Holds ``workdir``'s lock for the duration of the ``with`` block (no-op for None).

    Raises :class:`WorkdirLockedError` naming the holder if a live run has it, and
    :class:`WorkdirUnusableError` if the workdir cannot be created or written.
    """
    if not workdir:
        yield
        return
    while True:
        f, created = _open_lock_file(workdir)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_holder(f))
            f.close()
            raise WorkdirLockedError(
                f"The workdir {workdir!r} is in use by another bv-train run ({holder}). "
                "Two runs on one workdir would overwrite each other's checkpoints and logs: wait for that run to "
                "finish or stop it, or use another --workdir."
            ) from None
        if _is_current(f, os.path.join(workdir, LOCK_FILE)):
            break
        f.close()  # we locked a file its exiting holder had just removed: lock the current one
    try:
        previous = _read_holder(f)
        if previous:
            log.info("Taking over the workdir lock of a run that is no longer running (%s).", _describe(previous))
        f.seek(0)
        f.truncate()
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        f.write(json.dumps(record))
        f.flush()
        yield
    finally:
        # Removed while still locked, so no other run can have locked this file meanwhile.
        _remove_traces(workdir, created)
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()
