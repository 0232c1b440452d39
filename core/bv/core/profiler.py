"""Profiling a few training steps: ``config.profile = dict(start_step=10, num_steps=5)``.

Writes a ``jax.profiler`` trace of steps ``start_step+1 .. start_step+num_steps``
to ``WORKDIR/profile/`` (TensorBoard's profile plugin and Perfetto read it:
``tensorboard --logdir WORKDIR/profile``, or open the ``.trace.json.gz`` at
ui.perfetto.dev). Only process 0 traces. Start after the first step, which
compiles.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping

import jax

from bv.core.config import ConfigError

log = logging.getLogger("bv.profiler")

PROFILE_DIR = "profile"


@dataclasses.dataclass
class StepProfiler:
    """Starts a trace before step ``start_step + 1`` and stops it after ``num_steps`` steps."""

    start_step: int
    num_steps: int
    out_dir: str | None
    active: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, workdir: str | None) -> StepProfiler | None:
        if not cfg:
            return None
        cfg = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
        unknown = set(cfg) - {"start_step", "num_steps"}
        if unknown:
            raise ConfigError(f"config.profile has unknown keys {sorted(unknown)}; it takes start_step and num_steps.")
        start, num = cfg.get("start_step", 1), cfg.get("num_steps", 5)
        for key, value, low in (("start_step", start, 0), ("num_steps", num, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"config.profile.{key} must be a whole number >= {low}, got {value!r}.")
        if workdir is None:
            raise ConfigError("config.profile needs a --workdir to write the trace to.")
        out = os.path.join(workdir, PROFILE_DIR) if jax.process_index() == 0 else None
        return cls(start, num, out)

    def before_step(self, step: int) -> None:
        if self.out_dir and step == self.start_step + 1:
            log.info("Profiling steps %d to %d into %s.", step, step + self.num_steps - 1, self.out_dir)
            jax.profiler.start_trace(self.out_dir, create_perfetto_trace=True)
            self.active = True

    def after_step(self, step: int, outputs: Any) -> None:
        if self.active and step >= self.start_step + self.num_steps:
            jax.block_until_ready(outputs)  # the trace must hold the steps' device work, not just their dispatch
            self.stop()

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
