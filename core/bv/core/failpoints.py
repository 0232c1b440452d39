"""Crash points for testing that a killed run loses nothing.

Set ``BV_CRASH_AT=<point>@<step>`` (several separated by commas) and the
process kills itself with SIGKILL when it reaches that point at that step,
exactly as an out-of-memory kill or a pre-empted machine would. The points are
named where ``crash_point`` is called (``checkpoint.arrays_written``,
``checkpoint.renamed``, ``checkpoint.pointed``, ``train.step_done``).
Unset, a crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "BV_CRASH_AT"


def crash_point(name: str, step: int) -> None:
    """Kills this process with SIGKILL if ``BV_CRASH_AT`` names ``name@step``."""
    wanted = os.environ.get(ENV_VAR)
    if wanted and f"{name}@{step}" in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
