"""TensorBoard event files next to ``metrics.jsonl``, so that ``tensorboard --logdir runs/`` shows every run.

The writer is tensorboardX: pure Python on protobuf (a few hundred kB, in the ``train``
extra), it writes TensorBoard's own event format without importing TensorFlow or
TensorBoard, asynchronously from a background thread. ``tf.summary`` would add no
dependency (training has TensorFlow for its input pipeline), but it runs as TF ops
beside JAX in the training process; TensorBoard itself is the reader, a larger
package that training does not need.

A run writes its scalars (training loss, learning rate, throughput, memory, every
evaluator's metrics) under the names of ``metrics.jsonl``, its config as text, and
(``config.tensorboard_images``, default 4) a few of the first batch's input images.
A resumed run tells TensorBoard to drop what a killed run had logged past the
checkpoint it resumes from, as ``metrics.jsonl`` does.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any, Mapping

import numpy as np

from bv.core.metrics_log import MetricLog

__all__ = ["EventWriter", "LoggedRun", "input_images"]

log = logging.getLogger("bv.train")


class EventWriter:
    """Writes TensorBoard events into a folder; every method is a no-op when tensorboardX is missing."""

    def __init__(self, logdir: str, *, resume_step: int = 0):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            log.warning('No TensorBoard events: tensorboardX is not installed (pip install "bv-core[train]").')
            self._writer = None
            return
        # purge_step: events of steps after the resumed checkpoint (a killed run's) are hidden by TensorBoard.
        # The suffix keeps two writers of one second apart (tensorboardX names files by the second).
        self._writer = SummaryWriter(
            logdir,
            purge_step=resume_step + 1 if resume_step else None,
            flush_secs=10,
            filename_suffix=f".{time.time_ns()}.{os.getpid()}",
        )

    def scalars(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Each number of ``metrics`` under its own name (``test/prec@1`` as in metrics.jsonl); NaN kept, inf left out."""
        if self._writer is None:
            return
        from tensorboardX.proto.summary_pb2 import Summary

        values = []
        for name, value in metrics.items():
            if isinstance(value, (bool, str)) or not hasattr(value, "__float__"):
                continue
            value = float(value)
            if math.isfinite(value) or math.isnan(value):
                values.append(Summary.Value(tag=name, simple_value=value))
        if values:
            # Written as a Summary rather than with add_scalar, which renames tags such as "test/prec@1".
            self._writer._get_file_writer().add_summary(Summary(value=values), step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self._writer is not None:
            # Markdown: a code block keeps the config's indentation.
            self._writer.add_text(tag, "```\n" + text + "\n```", step)

    def images(self, tag: str, images: np.ndarray, step: int = 0) -> None:
        """``images``: ``(n, h, w, c)`` floats in [0, 1] (c = 1 or 3)."""
        if self._writer is not None and len(images):
            self._writer.add_images(tag, np.clip(images, 0.0, 1.0), step, dataformats="NHWC")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class LoggedRun(MetricLog):
    """:class:`bv.core.metrics_log.MetricLog` that also writes each record as TensorBoard scalars."""

    def __init__(self, workdir: str | None, *, resume_step: int = 0, quiet: bool = False, events: bool = True):
        # sys.stdout as it is now (MetricLog's default is the one of import time, e.g. a test's closed capture).
        super().__init__(workdir, resume_step=resume_step, quiet=quiet, stream=sys.stdout)
        self.events = EventWriter(workdir, resume_step=resume_step) if workdir and events else None

    def write(self, step: int, metrics: Mapping[str, Any], *, console: str | None = None) -> None:
        super().write(step, metrics, console=console)
        if self.events is not None:
            self.events.scalars(step, metrics)
            self.events.flush()

    def close(self) -> None:
        if self.events is not None:
            self.events.close()


def config_text(config: Any) -> str:
    """The config as indented JSON (what ``config.json`` holds)."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.dumps(data, indent=2, sort_keys=True, default=str)


def input_images(batch: Mapping[str, Any], count: int) -> np.ndarray | None:
    """Up to ``count`` images of a batch, each scaled to [0, 1] for display; None if it has no image batch."""
    images = batch.get("image") if count > 0 else None
    if images is None:
        return None
    images = np.asarray(images)
    if images.ndim == 5:  # (devices, per-device batch, h, w, c)
        images = images.reshape(-1, *images.shape[2:])
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        return None
    images = images[:count].astype(np.float32)
    low = images.min(axis=(1, 2, 3), keepdims=True)
    high = images.max(axis=(1, 2, 3), keepdims=True)
    return (images - low) / np.maximum(high - low, 1e-6)
