"""Repeated timings and their summary: every figure of the suite is a median of several runs, with min and max."""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable, Sequence


@dataclasses.dataclass(frozen=True)
class Spread:
    """The median, min and max of repeated measurements of one quantity, and how many there were."""

    median: float
    min: float
    max: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("A spread needs at least one measurement.")
        return cls(float(statistics.median(values)), float(min(values)), float(max(values)), len(values))

    def scaled(self, factor: float) -> Spread:
        """The spread of ``factor / x`` (``factor`` > 0): e.g. img/s from seconds per step; min and max swap."""
        return Spread(factor / self.median, factor / self.max, factor / self.min, self.runs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format(self, digits: int = 1, unit: str = "") -> str:
        """``"12.3 (11.9-12.8, 5 runs)"``."""
        return f"{self.median:.{digits}f}{unit} ({self.min:.{digits}f}-{self.max:.{digits}f}, {self.runs} runs)"


def seconds(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of one call of ``fn`` (which must block until its work is done)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each function, called in turn ``rounds`` times, so that a change of machine load hits all alike."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name].append(seconds(fn))
    return out


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> Spread:
    """The spread of the pairwise ratios of two alternated series (robust to load drifting between rounds)."""
    return Spread.of([a / b for a, b in zip(numerators, denominators)])
