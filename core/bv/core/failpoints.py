"""Crash points for testing that a killed run loses nothing.

Set ``BV_CRASH_AT=<point>@<step>`` (several separated by commas) and the
process kills itself with SIGKILL when it reaches that point at that step,
exactly as an out-of-memory kill or a pre-empted machine would. The points are
named where ``crash_point`` is called: ``checkpoint.writing`` (a save has started
and is being written in the background), ``checkpoint.written`` (every process
has written it, the folder is not yet renamed into place), ``checkpoint.committed``
(before older checkpoints are pruned) and ``train.step_done``.
Unset, a crash point costs one dictionary lookup.

``BV_FAIL_AT=<point>@<step>`` makes ``fail_point`` raise the error a full disk
gives (``OSError(ENOSPC)``) instead: ``checkpoint.write`` is the last write of a
checkpoint (its checksums, in the background thread); ``hub.save@0`` is a
``save_pretrained`` (and so a ``bv-export``) after its weights were written aside.
"""

from __future__ import annotations

import errno
import os
import signal

ENV_VAR = "BV_CRASH_AT"
FAIL_ENV_VAR = "BV_FAIL_AT"


def crash_point(name: str, step: int) -> None:
    """Kills this process with SIGKILL if ``BV_CRASH_AT`` names ``name@step``."""
    wanted = os.environ.get(ENV_VAR)
    if wanted and f"{name}@{step}" in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)


def fail_point(name: str, step: int) -> None:
    """Raises ``OSError(ENOSPC)`` if ``BV_FAIL_AT`` names ``name@step``, as a write to a full disk would."""
    wanted = os.environ.get(FAIL_ENV_VAR)
    if wanted and f"{name}@{step}" in wanted.split(","):
        raise OSError(errno.ENOSPC, f"No space left on device (injected by {FAIL_ENV_VAR}={wanted})")
