"""Progress bars (tqdm) on a terminal, nothing in logs or CI.

A bar is shown when stderr is a terminal and ``CI`` is not set; ``BV_PROGRESS=1`` or
``BV_PROGRESS=0`` forces it on or off. Bars appear only for work that lasts over
``delay`` seconds and vanish when done (``leave=False``), so short evals and the
trainer's own ETA line are not cluttered.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["bar", "enabled"]

T = TypeVar("T")


def enabled() -> bool:
    """Whether progress bars are shown here (see the module doc)."""
    forced = os.environ.get("BV_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if os.environ.get("CI"):
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def bar(
    iterable: Iterable[T], *, total: int | None = None, desc: str | None = None, unit: str = "it", delay: float = 2.0
) -> Iterator[T] | Iterable[T]:
    """``iterable``, with a tqdm bar on stderr when :func:`enabled`."""
    if not enabled():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, delay=delay, dynamic_ncols=True)
