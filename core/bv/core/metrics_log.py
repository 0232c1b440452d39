"""Training logs: JSON lines in the workdir and a readable console line.

``metrics.jsonl`` holds one object per logged step (``{"step": 100, "training_loss": ...}``).
After a resume the lines of steps past the restored checkpoint are dropped, so
the file reads as one uninterrupted run: each step once, in order. A line cut
short by a killed run is dropped with a warning; damaged lines elsewhere are
dropped too, after the file is copied to ``metrics.jsonl.damaged-<time>``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import shutil
import sys
import time
from typing import Any, Mapping, TextIO

import jax

from bv.core.errors import UserError

METRICS_FILE = "metrics.jsonl"

log = logging.getLogger("bv.train")


class MetricsWriteError(UserError, OSError):
    """metrics.jsonl could not be written (a full disk, a lost mount)."""


def read_records(path: str) -> list[dict[str, Any]]:
    """The records of a metrics file, without the lines that are not JSON objects (see the module doc)."""
    return _parse(path)[0]


def _parse(path: str) -> tuple[list[dict[str, Any]], bool]:
    """``(records, damaged)``: damaged if a line other than a cut last one is not a JSON record."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    records, bad = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            bad.append(number)
    last = max((n for n, line in enumerate(lines, 1) if line.strip()), default=0)
    if bad == [last]:
        log.warning("%s: its last line was cut short (a killed run); it is ignored.", path)
    elif bad:
        log.warning("%s: lines %s are not JSON records; they are ignored.", path, ", ".join(map(str, bad[:10])))
    return records, bool(bad) and bad != [last]


def _jsonable(value: Any) -> Any:
    value = float(value) if hasattr(value, "__float__") and not isinstance(value, (int, str)) else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or Infinity.
    return value


class MetricLog:
    """Appends metrics to ``workdir/metrics.jsonl`` and prints a summary line."""

    def __init__(self, workdir: str | None, *, resume_step: int = 0, stream: TextIO = sys.stdout, quiet: bool = False):
        self.path = os.path.join(workdir, METRICS_FILE) if workdir else None
        self.stream = stream
        self.quiet = quiet  # e.g. processes other than the first of a multi-host run
        if self.path and os.path.exists(self.path):
            self._truncate_after(resume_step)

    def _truncate_after(self, step: int) -> None:
        assert self.path
        records, damaged = _parse(self.path)
        kept = [r for r in records if r.get("step", 0) <= step]
        if damaged:  # more than a cut last line: keep the original for inspection
            shutil.copyfile(self.path, f"{self.path}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: Mapping[str, Any], *, console: str | None = None) -> None:
        """Records ``metrics`` for ``step``; prints ``console`` (or all metrics) to the stream."""
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        if self.path:
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:
                raise MetricsWriteError(
                    f"Could not append to {self.path}: {e.strerror or e}. Training stopped; its last checkpoint is "
                    "intact. Free some space (or fix the folder's permissions) and run again to resume."
                ) from None
        if console is None:
            console = " ".join(f"{k}={_fmt(v)}" for k, v in record.items() if k != "step")
        if not self.quiet:
            print(f"[step {step}] {console}", file=self.stream, flush=True)

    def read(self) -> list[dict[str, Any]]:
        """All records written so far."""
        if not self.path or not os.path.exists(self.path):
            return []
        return read_records(self.path)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_duration(seconds: float) -> str:
    """``3725`` -> ``"1h02m"``, ``95`` -> ``"1m35s"``."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Chrono:
    """Throughput, progress and ETA of training, excluding time spent in evals and checkpoints.

    ``train_seconds`` is stored in checkpoints so that throughput and ETA carry on
    across a resume.
    """

    def __init__(
        self,
        *,
        total_steps: int,
        global_batch_size: int,
        num_devices: int,
        start_step: int = 0,
        train_seconds: float = 0.0,
    ):
        self.total_steps = total_steps
        self.global_batch_size = global_batch_size
        self.num_devices = num_devices
        self.train_seconds = train_seconds
        self._mark_step = start_step
        self._mark_time = time.perf_counter()
        self._paused_at: float | None = None
        self._window: tuple[int, float] | None = None  # (steps, seconds) since the last report

    def pause(self) -> None:
        """Stops the clock (evals, checkpoint writes)."""
        self._paused_at = time.perf_counter()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._mark_time += time.perf_counter() - self._paused_at
            self._paused_at = None

    def tick(self, step: int) -> dict[str, float]:
        """Measures the steps since the last tick; returns the metrics to log at ``step``."""
        now = time.perf_counter()
        steps, seconds = step - self._mark_step, now - self._mark_time
        self.train_seconds += seconds
        self._mark_step, self._mark_time = step, now
        metrics = {
            "examples_seen": float(step * self.global_batch_size),
            "progress": step / self.total_steps,
            "train_seconds": self.train_seconds,
        }
        if steps > 0 and seconds > 0:
            step_time = seconds / steps
            metrics["img/sec/core"] = self.global_batch_size / step_time / self.num_devices
            metrics["eta_seconds"] = step_time * (self.total_steps - step)
        return metrics


def memory_metrics() -> dict[str, float]:
    """Peak host memory (RSS) and, where the backend reports it, device memory of this process, in GiB."""
    out = {"host_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # ru_maxrss is KiB
    stats = [d.memory_stats() for d in jax.local_devices()]
    if stats and all(stats):
        out["device_bytes_in_use_gb"] = max(s.get("bytes_in_use", 0) for s in stats) / 2**30
        out["device_peak_bytes_gb"] = max(s.get("peak_bytes_in_use", 0) for s in stats) / 2**30
    return out
